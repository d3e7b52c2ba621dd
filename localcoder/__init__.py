"""localcoder: run Qwen3-Coder-Next on hardware you own.

The package stays light to import: heavy modules (numba kernels, the server) are imported where they are used.
"""

__version__ = "0.1.0"
