"""Whole-model quantization to llama.cpp's K-quant file types, byte-identical to llama_model_quantize.

    quantize_model(Path("model-f32.gguf"), Path("model-Q4_K_M.gguf"), "Q4_K_M")
    quantize_model(Path("Qwen3-Coder-Next"), Path("model-Q4_K_M.gguf"), "Q4_K_M")   # HF folder: converted on the fly

What llama_model_quantize does and this repeats: metadata copied from the source, then general.quantization_version
and general.file_type re-set (which moves them to the end); tensors in llama.cpp's weights order (non-layer tensors,
then by layer, then by name); per-tensor types from quant.mixes; unquantizable tensors and tensors already in their
target type copied byte for byte; an imatrix applied per expert slice. Streaming, bounded memory, atomic output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

from localcoder.errors import UserError
from localcoder.progress import item_progress
from quant.ggml_types import encoded_nbytes
from quant.gguf_out import atomic_path, check_destination, write_gguf
from quant.mixes import FILE_TYPES, ModelShape, choose_types, parse_overrides, weights_order
from quant.quantize import dequantize, quantize

T = GGMLQuantizationType
FLOAT_SOURCES = (T.F32, T.F16, T.BF16, T.Q8_0)
QUANT_VERSION_KEY, FILE_TYPE_KEY = "general.quantization_version", "general.file_type"


@dataclass
class SourceTensor:
    """A tensor of the source model: GGML `ne` shape, stored type, and readers for float32 rows or raw row bytes."""

    name: str
    ne: tuple[int, ...]
    qtype: GGMLQuantizationType
    rows_f32: Callable[[int, int], np.ndarray]
    rows_raw: Callable[[int, int], np.ndarray]

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.ne[1:], dtype=np.int64))


@dataclass
class SourceModel:
    arch: str
    kv: list[tuple[str, Any, GGUFValueType, GGUFValueType | None]]
    tensors: list[SourceTensor]

    def value(self, key: str):
        return next((v for k, v, _, _ in self.kv if k == key), None)


@dataclass
class PlannedTensor:
    """One output tensor: what write_gguf needs (name, rows, bytes) plus where its rows come from."""

    src: SourceTensor
    qtype: GGMLQuantizationType
    imatrix: np.ndarray | None

    name = property(lambda self: self.src.name)
    n_rows = property(lambda self: self.src.n_rows)
    row_len = property(lambda self: self.src.ne[0])

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        """Shape as written: llama.cpp's gguf_add_tensor stores ggml_n_dims dimensions, dropping trailing 1s."""
        ne = list(self.src.ne)
        while len(ne) > 1 and ne[-1] == 1:
            ne.pop()
        return tuple(reversed(ne))

    @property
    def nbytes_out(self) -> int:
        return encoded_nbytes(self.numpy_shape, self.qtype)


def gguf_source(path: Path) -> SourceModel:
    """Metadata and tensors of a GGUF file, memory-mapped."""
    from localcoder.gguf_model import SPLIT_KEYS, open_model_files

    reader = open_model_files(path)
    kv = []
    for f in reader.fields.values():
        if not f.name.startswith("GGUF.") and f.name not in SPLIT_KEYS:
            sub = f.types[1] if f.types[0] == GGUFValueType.ARRAY else None
            kv.append((f.name, f.contents(), f.types[0], sub))
    tensors = [_gguf_tensor(t, reader.file_of[t.name]) for t in reader.tensors]
    arch = next((v for k, v, _, _ in kv if k == "general.architecture"), None)
    return SourceModel(arch, kv, tensors)


def _gguf_tensor(t, path: Path) -> SourceTensor:
    """Rows are read from the file on demand (not through the memory map, whose touched pages would count as
    resident memory for the whole file)."""
    qtype = T(t.tensor_type)
    ne = tuple(int(d) for d in t.shape)
    row_bytes = int(t.n_bytes) // int(np.prod(ne[1:], dtype=np.int64))
    offset = int(t.data_offset)

    def rows_raw(start: int, stop: int) -> np.ndarray:
        raw = np.fromfile(path, np.uint8, (stop - start) * row_bytes, offset=offset + start * row_bytes)
        if raw.size != (stop - start) * row_bytes:
            raise UserError(f"{path} ended inside {t.name}: the file is truncated")
        return raw.reshape(stop - start, row_bytes)

    def rows_f32(start: int, stop: int) -> np.ndarray:
        raw = rows_raw(start, stop)
        if qtype == T.F32:
            return raw.view(np.float32)
        return dequantize(raw, qtype, (stop - start, ne[0]))

    return SourceTensor(t.name, ne, qtype, rows_f32, rows_raw)


def hf_source(src: Path, keep_mtp: bool) -> SourceModel:
    """An HF folder seen as the F32 GGUF that the converter would write (nothing is written)."""
    from quant.convert import prepare

    writer, plan = prepare(src, "F32", keep_mtp)
    kv = [(k, v.value, v.type, v.sub_type) for k, v in writer.kv_data[0].items()]
    tensors = []
    for t in plan:
        def rows(start, stop, t=t):
            return np.ascontiguousarray(t.rows(start, stop), dtype=np.float32)
        tensors.append(SourceTensor(t.name, tuple(reversed(t.shape)), T.F32, rows,
                                    lambda a, b, rows=rows: rows(a, b).view(np.uint8)))
    return SourceModel("qwen3next", kv, tensors)


def _model_shape(model: SourceModel) -> ModelShape:
    a = model.arch
    need = {k: model.value(f"{a}.{k}") for k in ("attention.head_count", "attention.head_count_kv", "block_count")}
    if any(v is None for v in need.values()):
        raise UserError(f"the source has no {a}.attention.head_count / head_count_kv / block_count metadata")
    return ModelShape(need["attention.head_count"], need["attention.head_count_kv"],
                      model.value(f"{a}.expert_count") or 0, need["block_count"])


def _check_sources(model: SourceModel, chosen: dict, allow_requantize: bool) -> None:
    for t in model.tensors:
        target = chosen[t.name]
        if target is None or target == t.qtype:
            continue
        if t.qtype not in FLOAT_SOURCES and not allow_requantize:
            raise UserError(f"the source is already quantized ({t.name} is {t.qtype.name}); requantizing loses "
                            "quality: start from the HF weights or an F32/F16/BF16/Q8_0 GGUF, or pass "
                            "--allow-requantize")
        if t.qtype not in FLOAT_SOURCES + (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q5_0, T.Q5_1):
            raise UserError(f"{t.name} is stored as {t.qtype.name}, which localcoder cannot read yet")


def _imatrix_for(t: SourceTensor, imatrix: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """llama.cpp's lookup: by name, one slice of ne[0] per expert; a size mismatch is an error (not token_embd)."""
    if not imatrix or t.name not in imatrix:
        return None
    values = np.asarray(imatrix[t.name], dtype=np.float32)
    n_expert = t.ne[2] if len(t.ne) > 2 else 1
    if values.size != t.ne[0] * n_expert:
        if t.name == "token_embd.weight":
            return None
        raise UserError(f"the imatrix has {values.size} values for {t.name}, which needs {t.ne[0] * n_expert}: "
                        "it was computed for another model")
    return values.reshape(n_expert, t.ne[0])


def _encode(p: PlannedTensor, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) in the output type; with an imatrix, quantized expert by expert."""
    if p.qtype == p.src.qtype:
        return p.src.rows_raw(start, stop)
    if p.imatrix is None:
        return quantize(p.src.rows_f32(start, stop), p.qtype)
    rows_per_expert = p.src.ne[1]
    parts, row = [], start
    while row < stop:
        expert = row // rows_per_expert
        end = min(stop, (expert + 1) * rows_per_expert)
        parts.append(quantize(p.src.rows_f32(row, end), p.qtype, p.imatrix[expert]))
        row = end
    return np.concatenate(parts)


@dataclass
class QuantizeResult:
    out: Path
    n_tensors: int
    bytes_out: int
    seconds: float
    types: dict[str, str]


def quantize_model(src: Path, out: Path, file_type: str, imatrix: dict[str, np.ndarray] | None = None,
                   tensor_types: list[str] = (), allow_requantize: bool = False, keep_mtp: bool = True,
                   show_progress: bool = True) -> QuantizeResult:
    """Quantize `src` (an HF folder or a GGUF file) to `out` with llama.cpp's `file_type` mix (Q2_K..Q8_0).

    `imatrix` maps tensor names to importance weights (see quant.imatrix); `tensor_types` are `REGEX=TYPE`
    overrides, first match wins, applied as llama.cpp's --tensor-type."""
    src, out = Path(src), Path(out)
    started = time.perf_counter()
    key = file_type.upper()
    if key not in FILE_TYPES:
        raise UserError(f"--type {file_type} is not a llama.cpp file type localcoder makes; choose one of "
                        f"{', '.join(FILE_TYPES)}")
    ftype, _ = FILE_TYPES[key]
    overrides = parse_overrides(list(tensor_types))
    model = hf_source(src, keep_mtp) if src.is_dir() else gguf_source(src)
    by_name = {t.name: t for t in model.tensors}
    chosen = choose_types({t.name: t.ne for t in model.tensors}, key, _model_shape(model), overrides)
    _check_sources(model, chosen, allow_requantize)
    plan = [PlannedTensor(by_name[n], chosen[n] or by_name[n].qtype, _imatrix_for(by_name[n], imatrix))
            for n in weights_order(list(by_name))]
    for p in plan:
        if p.qtype != p.src.qtype and p.row_len % GGML_QUANT_SIZES[p.qtype][0]:
            raise UserError(f"{p.name}: rows of {p.row_len} cannot be stored as {p.qtype.name}")
    writer = _writer(model, plan, ftype)
    total = sum(p.nbytes_out for p in plan)
    check_destination(out, total + (64 << 20))
    with item_progress(f"quantizing {key}", len(plan), total, show_progress) as progress, atomic_path(out) as tmp:
        write_gguf(writer, tmp, plan, _encode, progress)
    return QuantizeResult(out, len(plan), out.stat().st_size, time.perf_counter() - started,
                          {p.name: p.qtype.name for p in plan})


def _writer(model: SourceModel, plan: list[PlannedTensor], ftype) -> GGUFWriter:
    writer = GGUFWriter(path=None, arch=model.arch)  # writes general.architecture first, as the source has it
    for key, value, vtype, sub in model.kv:
        if key not in ("general.architecture", QUANT_VERSION_KEY, FILE_TYPE_KEY):
            writer.add_key_value(key, value, vtype, sub)
    writer.add_uint32(QUANT_VERSION_KEY, 2)
    writer.add_uint32(FILE_TYPE_KEY, int(ftype))
    for p in plan:
        writer.add_tensor_info(p.name, p.numpy_shape, np.dtype(np.float32), p.nbytes_out, raw_dtype=p.qtype)
    return writer
