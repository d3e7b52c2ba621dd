"""localcoder: run Qwen3-Coder-Next on hardware you own.

The package stays light to import: heavy modules (numba kernels, the server) are imported where they are used.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`localcoder.Model` without importing the runtime (numba kernels) at package import."""
    if name == "Model":
        from localcoder.model import Model
        return Model
    raise AttributeError(f"module 'localcoder' has no attribute {name!r}")
