"""The graph file: its reader and writer, damage checks, the id index, the featurize pipeline that fills it,
labels, and the batches that feed the network."""
