"""The network (SR-CGCNN and CGCNN in one class), its edge block and weighted BatchNorm, model files,
ensembles, and the registry of pretrained models."""
