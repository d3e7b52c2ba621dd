"""llama.cpp's own whole-file quantizer, llama_model_quantize, through llama-cpp-python."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

FTYPES = {"Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
          "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7}


def llama_quantize(src: Path, out: Path, file_type: str, imatrix: dict[str, np.ndarray] | None = None,
                   tensor_types: list[tuple[str, int]] = (), nthread: int = 2) -> Path:
    import llama_cpp as L

    L.llama_backend_init()
    p = L.llama_model_quantize_default_params()
    p.ftype = FTYPES[file_type]
    p.nthread = nthread
    keep = []  # ctypes buffers must outlive the call
    if imatrix:
        entries = (L.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32).ravel()
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None
        p.imatrix = entries
    if tensor_types:
        overrides = (L.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, ggml_type) in enumerate(tensor_types):
            overrides[i].pattern = pattern.encode()
            overrides[i].type = ggml_type
        overrides[len(tensor_types)].pattern = None
        p.tt_overrides = overrides
    rc = L.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))
    assert rc == 0, f"llama_model_quantize failed ({rc})"
    return out
