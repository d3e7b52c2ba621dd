"""Field-by-field and tensor-by-tensor comparison of two GGUF files, with readable differences."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader

# Keys that only name the writing tool. llama.cpp's converter writes none today; kept explicit for the day it does.
TOOL_KEYS: set[str] = set()


def fields(path: Path) -> dict:
    reader = GGUFReader(path)
    return {f.name: (f.types, f.contents()) for f in reader.fields.values()
            if not f.name.startswith("GGUF.") and f.name not in TOOL_KEYS}


def tensor_differences(mine: Path, ref: Path) -> list[str]:
    a, b = GGUFReader(mine), GGUFReader(ref)
    la = [(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in a.tensors]
    lb = [(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in b.tensors]
    if la != lb:
        return [f"tensor lists differ: {sorted(set(la) ^ set(lb))[:6]}" if set(la) != set(lb)
                else "same tensors in a different order"]
    return [f"{ta.name}: bytes differ" for ta, tb in zip(a.tensors, b.tensors)
            if ta.data.tobytes() != tb.data.tobytes()]


def field_differences(mine: Path, ref: Path) -> list[str]:
    fa, fb = fields(mine), fields(ref)
    out = [f"only in ours: {k}" for k in fa.keys() - fb.keys()] + [f"only in llama.cpp's: {k}" for k in fb.keys() - fa.keys()]
    out += [f"{k}: ours {str(fa[k])[:120]} vs llama.cpp {str(fb[k])[:120]}" for k in fa.keys() & fb.keys()
            if fa[k] != fb[k]]
    return out
