"""Split a GGUF into shards the way llama.cpp's gguf-split does, so that llama.cpp and localcoder both load them.

Shards are named NAME-00001-of-0000N.gguf; the first holds all metadata, every shard holds `split.no`,
`split.count` and `split.tensors.count`, and tensors keep their order. gguf-py's writer does the sharding; tensor
data is copied from the memory-mapped source. Shards are written in a temporary folder beside the output and moved
into place only when all of them are complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from localcoder.errors import UserError

UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5G' or a byte count -> bytes (decimal units, as llama.cpp's --split-max-size)."""
    t = text.strip().upper().removesuffix("B")
    try:
        value = float(t[:-1]) * UNITS[t[-1]] if t and t[-1] in UNITS else float(t)
    except ValueError:
        value = -1
    if value < 1:
        raise UserError(f"--max-size {text!r} is not a size like 500M or 2G")
    return int(value)


def split_gguf(src: Path, out: Path, max_bytes: int, show_progress: bool = True) -> list[Path]:
    """Write `src` (one GGUF) as shards of at most `max_bytes` of tensor data each (a tensor larger than that gets
    a shard of its own); returns the shard paths, named after `out`."""
    from gguf import GGUFWriter

    from localcoder.gguf_model import SHARD_NAME, copy_metadata, open_model_files

    files = open_model_files(src)
    if len(files.paths) > 1:
        raise UserError(f"{src} is already split into {len(files.paths)} shards")
    if SHARD_NAME.match(out.name) or out.suffix != ".gguf":
        raise UserError(f"give the output as NAME.gguf (the shards become NAME-00001-of-0000N.gguf), not {out.name}")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    arch = files.fields["general.architecture"].contents()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        writer = GGUFWriter(Path(tmp) / out.name, arch, split_max_size=max_bytes)
        copy_metadata(files, writer)
        for t in files.tensors:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # quantized data: its byte shape
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=show_progress)
        writer.close()
        written = sorted(Path(tmp).glob("*.gguf"))
        targets = [out.parent / p.name for p in written]
        clash = [p.name for p in targets if p.exists()]
        if clash:
            raise UserError(f"{', '.join(clash)} already exist{'s' if len(clash) == 1 else ''}; remove or choose "
                            "another -o")
        for p, target in zip(written, targets):
            shutil.move(p, target)
    return targets
