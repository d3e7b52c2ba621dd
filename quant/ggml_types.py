"""Output types of the converter: which GGML type each tensor gets, and encoding rows into that type.

The policy is llama.cpp's converter's (reference/qwen3next.md 2.6, CB prepare_tensors): 1-D tensors, norms, the
routers, the conv kernel and non-`.weight` tensors stay F32; everything else takes the requested type, and Q8_0
falls back to F16 for rows that are not a multiple of its 32-wide block.
"""

from __future__ import annotations

import re

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants as gguf_quants

from localcoder.errors import UserError

# --type name -> (GGML type of the big tensors, general.file_type)
CONVERT_TYPES = {
    "F32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "F16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "BF16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_ALWAYS_F32 = re.compile(r"blk\.\d+\.(ffn_gate_inp|ffn_gate_inp_shexp|ssm_conv1d)\.weight$")


def parse_type(name: str) -> tuple[GGMLQuantizationType, LlamaFileType]:
    """The GGML type and file type for a --type value (case-insensitive)."""
    key = name.upper()
    if key not in CONVERT_TYPES:
        raise UserError(f"--type {name} is not supported yet; choose one of {', '.join(CONVERT_TYPES)}")
    return CONVERT_TYPES[key]


def tensor_type(name: str, shape: tuple[int, ...], requested: GGMLQuantizationType) -> GGMLQuantizationType:
    """The GGML type llama.cpp's converter gives tensor `name` of numpy-order `shape`."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or _ALWAYS_F32.search(name) or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    block, _ = GGML_QUANT_SIZES[requested]
    if shape[-1] % block:
        return GGMLQuantizationType.F16
    return requested


def encoded_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of numpy-order `shape` stored as `qtype`."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return n_rows * (shape[-1] // block) * type_size


def encode_rows(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Encode a 2-D block of rows (in the converter's work dtype) exactly as gguf-py's quantize does."""
    return gguf_quants.quantize(rows, qtype)
