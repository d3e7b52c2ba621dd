"""Run llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python sdist) as the byte-exact oracle.

One change to the oracle: llama.cpp identifies a BPE pre-tokenizer by hashing the token ids of a test string, a
table that only knows published tokenizers, so a tokenizer trained in a test is rejected. The test tokenizers use
Qwen2's exact pre-tokenizer, so the lookup is answered with "qwen2", the value llama.cpp gives Qwen's tokenizer.

usage: python run_llama_convert.py CONVERTER_DIR [convert_hf_to_gguf.py arguments...]
"""

import runpy
import sys
from pathlib import Path

converter_dir = Path(sys.argv[1])
sys.path.insert(0, str(converter_dir))
sys.path.insert(1, str(converter_dir / "gguf-py"))
import conversion.base  # noqa: E402

conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = [str(converter_dir / "convert_hf_to_gguf.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
