"""Streaming, atomic GGUF output: header and metadata through gguf-py's writer, tensor data row chunk by row chunk.

The file is written beside its destination under a temporary name and renamed only when complete, so after any
failure or Ctrl-C nothing exists under the final name and the temporary file is removed.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from gguf import GGUFWriter

from localcoder.errors import UserError
from localcoder.progress import ItemProgress

CHUNK_BYTES = 64 << 20  # work-dtype bytes converted per step: bounds memory whatever the tensor size
DISK_MARGIN = 16 << 20


def check_destination(out: Path, needed_bytes: int) -> None:
    """Refuse, before writing anything, a destination that cannot be written or lacks the space."""
    parent = out.parent
    if out.is_dir():
        raise UserError(f"{out} is a directory; give the output file name, e.g. {out / 'model.gguf'}")
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {out}: folder {parent} is not writable")
    free = shutil.disk_usage(parent).free
    if free < needed_bytes + DISK_MARGIN:
        raise UserError(f"not enough free disk at {parent}: the output needs {needed_bytes / 1e9:.2f} GB, "
                        f"{free / 1e9:.2f} GB free; free some space or choose another -o")


@contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed to `out` when the block succeeds and deleted when it fails."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(writer: GGUFWriter, path: Path, tensors: list, encode: Callable[[object, int, int], np.ndarray],
               progress: ItemProgress) -> None:
    """Write header, metadata and tensor infos already added to `writer`, then each tensor's data.

    `encode(tensor, start, stop)` returns the encoded bytes of rows [start, stop) of `tensor`; each tensor must
    expose `n_rows`, `row_len` and `nbytes_out` (its encoded size, as declared to the writer).
    """
    try:
        writer.write_header_to_file(path=path)
    except OSError as e:
        raise UserError(f"cannot write {path.parent}: {e.strerror}") from None
    try:
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        for t in tensors:
            progress.start(t.name)
            step = max(1, CHUNK_BYTES // (4 * t.row_len))
            written = 0
            for start in range(0, t.n_rows, step):
                data = encode(t, start, min(t.n_rows, start + step))
                fout.write(data.tobytes())
                written += data.nbytes
                progress.advance(data.nbytes)
            if written != t.nbytes_out:
                raise RuntimeError(f"{t.name}: wrote {written} bytes, declared {t.nbytes_out}")
            writer.write_padding(fout, written)
        fout.flush()
        os.fsync(fout.fileno())
    finally:
        writer.close()
