"""Shared fixtures: tiny HF checkpoints (built once per session) and llama.cpp's converter as an oracle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tinymodels import build_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LLAMA_CONVERTER = Path(os.environ.get("LOCALCODER_LLAMA_CONVERTER", REPO / ".cache" / "llama.cpp-0.3.36"))


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """build(geometry, dtype="float32", mtp=False) -> HF folder, cached for the session."""
    cache: dict[tuple, Path] = {}

    def build(geometry: str, dtype: str = "float32", mtp: bool = False) -> Path:
        key = (geometry, dtype, mtp)
        if key not in cache:
            cache[key] = build_model(tmp_path_factory.mktemp(f"{geometry}-{dtype}-{'mtp' if mtp else 'base'}"),
                                     geometry, dtype, mtp=mtp)
        return cache[key]
    return build


def llama_convert(src: Path, out: Path, outtype: str, mtp: bool = False) -> Path:
    """Convert with llama.cpp's own convert_hf_to_gguf.py (the byte-exact reference)."""
    if not (LLAMA_CONVERTER / "convert_hf_to_gguf.py").is_file():
        pytest.fail(f"llama.cpp's converter is missing at {LLAMA_CONVERTER}: run `make test`, which fetches it")
    args = [sys.executable, str(Path(__file__).parent / "oracles" / "run_llama_convert.py"), str(LLAMA_CONVERTER),
            str(src), "--outtype", outtype.lower(), "--outfile", str(out)] + ([] if mtp else ["--no-mtp"])
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, f"llama.cpp converter failed:\n{run.stderr[-4000:]}"
    return out
