"""Fetch llama.cpp's convert_hf_to_gguf.py (with its conversion/ and gguf-py/ packages) and its Qwen3-Coder chat
template from the llama-cpp-python sdist on PyPI, for the tests that hold localcoder to them.

usage: python scripts/fetch_llama_converter.py VERSION DEST_DIR
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/Qwen3-Coder.jinja")
COMPLETE = ".complete"  # written last: a folder without it is an interrupted fetch


def main(version: str, dest: str) -> None:
    dest_dir = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(KEEP) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(prefix):]
            staging = dest_dir.with_name(dest_dir.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            tar.extractall(staging, members=members, filter="data")
    (staging / COMPLETE).write_text(version)
    shutil.rmtree(dest_dir, ignore_errors=True)
    staging.replace(dest_dir)
    print(f"llama.cpp converter {version} in {dest_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
