"""ggml's own quantizer (`ggml_quantize_chunk` in llama-cpp-python's libggml-base) through ctypes."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def _library() -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    return lib


_LIB = None


def ggml_quantize(x: np.ndarray, ggml_type: int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's bytes for float32 rows x (rows, cols) quantized to `ggml_type`, optionally with quant_weights."""
    global _LIB
    _LIB = _LIB or _library()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    row_bytes = _LIB.ggml_row_size(int(ggml_type), cols)
    out = np.zeros((rows, row_bytes), np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = _LIB.ggml_quantize_chunk(int(ggml_type), x.ctypes.data, out.ctypes.data, 0, rows, cols,
                                       None if qw is None else qw.ctypes.data)
    assert written == out.nbytes
    return out
