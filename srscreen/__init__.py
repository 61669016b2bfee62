"""srscreen: high-throughput screening of crystals with SR-CGCNN.

The Python API (docs/api.md): `featurize` a folder of structures into a graph file, `predict`
and rank it, `evaluate` models against labels, `train` or `finetune` a model; `load_model` predicts
pymatgen Structures in memory. Each name is imported on first use, so `import srscreen` stays light
(no torch) for the command line's `--help`.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "featurize", "predict", "evaluate", "train", "finetune", "TrainConfig", "load_model",
           "Model"]

# name -> the module that defines it
_API = {
    "featurize": "srscreen.data.featurize",
    "predict": "srscreen.screening.predict",
    "evaluate": "srscreen.screening.evaluate",
    "train": "srscreen.trainer.trainer",
    "finetune": "srscreen.trainer.trainer",
    "TrainConfig": "srscreen.trainer.config",
    "load_model": "srscreen.screening.structures",
    "Model": "srscreen.screening.structures",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # found once; later lookups skip this function
        return value
    raise AttributeError(f"module 'srscreen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
