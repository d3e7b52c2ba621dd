"""Read a GGUF's metadata and summarise its tensors by kind (what `localcoder inspect` prints)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


ARRAY_PREVIEW = 8


@dataclass
class KindSummary:
    kind: str
    count: int = 0
    params: int = 0
    nbytes: int = 0
    types: Counter = field(default_factory=Counter)


@dataclass
class GGUFInfo:
    path: Path
    file_bytes: int
    metadata: dict[str, Any]
    kinds: list[KindSummary]

    @property
    def n_tensors(self) -> int:
        return sum(k.count for k in self.kinds)

    @property
    def n_params(self) -> int:
        return sum(k.params for k in self.kinds)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "file_bytes": self.file_bytes, "n_tensors": self.n_tensors,
                "n_params": self.n_params, "metadata": {k: _jsonable(v) for k, v in self.metadata.items()},
                "tensor_kinds": [{"kind": k.kind, "count": k.count, "params": k.params, "bytes": k.nbytes,
                                  "types": dict(k.types)} for k in self.kinds]}


def tensor_kind(name: str) -> str:
    """`blk.7.ffn_up_exps.weight` -> `ffn_up_exps`; `token_embd.weight` -> `token_embd`."""
    return re.sub(r"\.(weight|bias)$", "", re.sub(r"^blk\.\d+\.", "", name))


def _jsonable(value: Any) -> Any:
    if isinstance(value, list) and len(value) > ARRAY_PREVIEW:
        return {"array_length": len(value), "head": value[:ARRAY_PREVIEW]}
    return value


def read_gguf_info(path: Path) -> GGUFInfo:
    """Metadata (arrays in full) and per-kind tensor totals of the GGUF at `path`."""
    from localcoder.gguf_model import load_fields

    path = Path(path)
    metadata, reader = load_fields(path)
    kinds: dict[str, KindSummary] = defaultdict(lambda: KindSummary(""))
    for t in reader.tensors:
        k = kinds[tensor_kind(t.name)]
        k.kind, k.count = tensor_kind(t.name), k.count + 1
        k.params += int(np.prod(t.shape, dtype=np.int64))
        k.nbytes += int(t.n_bytes)
        k.types[t.tensor_type.name] += 1
    return GGUFInfo(path, sum(p.stat().st_size for p in reader.paths), metadata, sorted(kinds.values(), key=lambda k: -k.nbytes))
