"""Memory-mapped, validated access to a Hugging Face safetensors checkpoint (one file or shards + index).

Headers are parsed here rather than by the safetensors library so that every defect (truncated shard, bad header,
index naming a missing file) becomes a one-line UserError before the first output byte is written, and so that
tensors are read as row ranges of a read-only memory map: nothing is loaded whole.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localcoder.errors import UserError

INDEX_NAME = "model.safetensors.index.json"
# safetensors dtype -> (numpy storage dtype, bytes per element). bf16 is stored as uint16 and widened on read.
_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class SourceTensor:
    """One tensor of a shard: its place in the file and a lazy 2-D row view (rows = all but the last dim)."""

    name: str
    dtype: str  # "F32" | "F16" | "BF16"
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the shard
    nbytes: int

    @property
    def work_dtype(self) -> np.dtype:
        """The dtype llama.cpp's converter computes in: f16 and f32 stay, everything else becomes f32."""
        return np.dtype(np.float16 if self.dtype == "F16" else np.float32)

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the 2-D view, in work dtype (a fresh array; the map is released)."""
        storage, size = _DTYPES[self.dtype]
        row_bytes = self.row_len * size
        count = (stop - start) * self.row_len
        if count == 0:
            return np.empty((0, self.row_len), self.work_dtype)
        raw = np.fromfile(self.path, dtype=storage, count=count, offset=self.offset + start * row_bytes)
        if raw.size != count:
            raise UserError(f"{self.path.name} ended while reading {self.name}: the shard is truncated; "
                            "re-download it")
        if self.dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.reshape(stop - start, self.row_len).astype(self.work_dtype, copy=False)

    def read(self) -> np.ndarray:
        """The whole tensor in work dtype and its own shape (only for small tensors)."""
        return self.rows(0, self.n_rows).reshape(self.shape)


def _parse_shard(path: Path) -> list[SourceTensor]:
    """Parse a shard header, checking it against the file size; tensors sorted by name (as llama.cpp does)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path} is not a safetensors file (too short); re-download it")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(_MAX_HEADER, size - 8):
                raise UserError(f"{path} has a corrupt or truncated header; re-download it")
            header = json.loads(f.read(header_len).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} has a corrupt header (not JSON); re-download it") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} has a corrupt header; re-download it")
    data_start = 8 + header_len
    tensors = []
    for name, meta in sorted(header.items()):
        if name == "__metadata__":
            continue
        tensors.append(_tensor_from_meta(path, name, meta, data_start, size))
    return tensors


def _tensor_from_meta(path: Path, name: str, meta: dict, data_start: int, file_size: int) -> SourceTensor:
    try:
        dtype, shape, (begin, end) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: corrupt header entry for {name}; re-download it") from None
    if dtype not in _DTYPES:
        raise UserError(f"{path}: tensor {name} has dtype {dtype}; localcoder converts F32, F16 and BF16 "
                        "checkpoints (dequantize FP8/int checkpoints first)")
    expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][1]
    if end - begin != expected:
        raise UserError(f"{path}: tensor {name} has {end - begin} bytes for shape {list(shape)}; the shard is "
                        "corrupt, re-download it")
    if data_start + end > file_size:
        raise UserError(f"{path} is truncated ({file_size} bytes, tensor {name} needs {data_start + end}); "
                        "re-download it")
    return SourceTensor(name, dtype, shape, path, data_start + begin, end - begin)


def _shard_names(model_dir: Path) -> tuple[list[str], dict[str, str] | None]:
    """Shard file names in llama.cpp's order, and the index's weight map when there is an index."""
    index_path = model_dir / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise UserError(f"{index_path} is corrupt (not a JSON index); re-download it") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index_path} has no 'weight_map'; re-download it")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise UserError(f"{INDEX_NAME} names shard(s) missing from {model_dir}: {', '.join(missing)}; "
                            "download them or re-download the model")
        return shards, weight_map
    shards = sorted(p.name for p in model_dir.iterdir() if p.name.startswith("model") and p.suffix == ".safetensors")
    if not shards:
        raise UserError(f"{model_dir} has no model*.safetensors files: point SRC at a Hugging Face model folder")
    return shards, None


def open_checkpoint(model_dir: Path) -> dict[str, SourceTensor]:
    """All tensors of the checkpoint in llama.cpp's converter order (shard by shard, sorted by name)."""
    shards, weight_map = _shard_names(model_dir)
    tensors: dict[str, SourceTensor] = {}
    for shard in shards:
        for t in _parse_shard(model_dir / shard):
            tensors[t.name] = t
    if weight_map is not None and set(weight_map) != set(tensors):
        missing = sorted(set(weight_map) - set(tensors))
        extra = sorted(set(tensors) - set(weight_map))
        raise UserError(f"{INDEX_NAME} does not match the shards (missing: {_few(missing)}; unlisted: "
                        f"{_few(extra)}); re-download the model")
    return tensors


def _few(names: list[str], n: int = 3) -> str:
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
