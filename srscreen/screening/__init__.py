"""Screening: predict over a graph file, the ranking (one writer and sort key for predict and merge),
the convex hull, evaluation against labels, and predictions for pymatgen Structures in memory."""
