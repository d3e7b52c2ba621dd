"""Importance matrices as llama.cpp writes them (llama-imatrix): the GGUF format and the legacy .dat format.

Loaded into what llama_model_quantize consumes: tensor name -> float32 weights, one row of ne[0] per expert,
normalised as llama-quantize's loader does (tools/quantize/quantize.cpp load_imatrix, common/imatrix-loader.cpp):
GGUF: `<name>.in_sum2 / <name>.counts` per expert (count 0 -> all ones); legacy: `sums / ncall`.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from localcoder.errors import UserError

GGUF_MAGIC = b"GGUF"
REQUIRED_KEYS = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Weights per tensor name from an imatrix file of either format; one-line UserError when unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read the imatrix {path}: {e.strerror}") from None
    data = _load_gguf(path) if magic == GGUF_MAGIC else _load_legacy(path)
    for name, values in data.items():
        if not np.isfinite(values).all():
            raise UserError(f"the imatrix {path} has non-finite values for {name}; recompute it")
    if not data:
        raise UserError(f"the imatrix {path} holds no entries")
    return data


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, struct.error) as e:
        raise UserError(f"the imatrix {path} is corrupt ({e}); recompute it") from None
    if any(k not in reader.fields for k in REQUIRED_KEYS):
        raise UserError(f"the imatrix {path} lacks the imatrix.* metadata llama-imatrix writes; it is not an "
                        "imatrix file")
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, np.float32).ravel()
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.asarray(t.data, np.float32).ravel()
    if set(sums) != set(counts):
        raise UserError(f"the imatrix {path} has sums without counts (or the reverse); recompute it")
    out = {}
    for name, s in sums.items():
        c = np.floor(counts[name] + np.float32(0.5)).astype(np.float32)  # lround(count), then a float divide
        per_expert = s.reshape(c.size, -1)
        safe = np.where(c > 0, c, np.float32(1))[:, None]
        out[name] = np.where(c[:, None] > 0, per_expert / safe, np.float32(1)).astype(np.float32).ravel()
    return out


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise UserError(f"the imatrix {path} is truncated or not an imatrix file")
        values = struct.unpack_from(fmt, raw, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise UserError(f"the imatrix {path} is not an imatrix file (no entries)")
    out = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise UserError(f"the imatrix {path} is corrupt (bad name length {length})")
        name = take(f"<{length}s")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise UserError(f"the imatrix {path} is corrupt ({name} has {nval} values)")
        start = pos
        take(f"<{4 * nval}x")  # bounds check first
        sums = np.frombuffer(raw, np.float32, nval, start).copy()
        out[name] = (sums / np.float32(ncall)).astype(np.float32) if ncall > 0 else sums
    return out


def write_legacy_imatrix(path: Path, entries: dict[str, tuple[int, np.ndarray]]) -> None:
    """Write the legacy format: {name: (ncall, sums)} (used by tests and by users converting old files)."""
    parts = [struct.pack("<i", len(entries))]
    for name, (ncall, sums) in entries.items():
        encoded = name.encode()
        sums = np.asarray(sums, np.float32)
        parts += [struct.pack("<i", len(encoded)), encoded, struct.pack("<ii", ncall, sums.size), sums.tobytes()]
    Path(path).write_bytes(b"".join(parts))
