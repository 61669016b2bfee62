"""srscreen: high-throughput screening of crystals with SR-CGCNN.

`load_model` (README, "Python API") predicts pymatgen Structures in memory; it is imported on first
use, so `import srscreen` stays light.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "Model"]


def __getattr__(name: str):
    if name in ("load_model", "Model"):
        from srscreen.screening import structures as api

        return getattr(api, name)
    raise AttributeError(f"module 'srscreen' has no attribute {name!r}")
