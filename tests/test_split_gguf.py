"""Split GGUFs: shards written as llama.cpp's gguf-split writes them load in llama.cpp and in localcoder with the
same logits as the single file; a missing or foreign shard is a clear error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from localcoder.demo import ensure_demo_gguf
from localcoder.errors import UserError
from localcoder.gguf_info import read_gguf_info
from localcoder.model import Model

runner = CliRunner()
TOKENS = [3, 17, 99, 250, 7, 64]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    done = runner.invoke(app, ["split", str(ensure_demo_gguf()), "-o", str(folder / "demo.gguf"), "--max-size", "3M",
                               "--quiet"])
    assert done.exit_code == 0, done.output
    return sorted(folder.glob("demo-*-of-*.gguf"))


def llama_logits(path) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(TOKENS)
    return np.array(llm.scores[:len(TOKENS)])


def test_shards_are_named_and_sized_like_gguf_split(shards):
    n = len(shards)
    assert n > 2 and [p.name for p in shards] == [f"demo-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    from gguf import GGUFReader
    for i, p in enumerate(shards):
        fields = GGUFReader(p).fields
        assert fields["split.no"].contents() == i and fields["split.count"].contents() == n
    assert "tokenizer.ggml.tokens" in GGUFReader(shards[0]).fields
    assert "tokenizer.ggml.tokens" not in GGUFReader(shards[1]).fields


def test_llama_cpp_and_localcoder_run_the_shards_like_the_single_file(shards):
    single = ensure_demo_gguf()
    assert np.array_equal(llama_logits(shards[0]), llama_logits(single))
    assert np.array_equal(Model.load(shards[-1]).logits(TOKENS), Model.load(single).logits(TOKENS))


def test_inspect_sees_the_whole_model_through_any_shard(shards):
    whole, split = read_gguf_info(ensure_demo_gguf()), read_gguf_info(shards[1])
    assert (split.n_tensors, split.n_params) == (whole.n_tensors, whole.n_params)
    assert split.metadata == whole.metadata


def test_a_missing_shard_is_a_clear_error(shards, tmp_path):
    for p in shards[:-1]:
        shutil.copy(p, tmp_path / p.name)
    with pytest.raises(UserError, match=f"{shards[-1].name} is missing beside it"):
        Model.load(tmp_path / shards[0].name)


def test_a_shard_from_another_split_is_refused(shards, tmp_path):
    for p in shards:
        shutil.copy(p, tmp_path / p.name)
    first, second = tmp_path / shards[0].name, tmp_path / shards[1].name
    shutil.copy(first, second)  # shard 1's content under shard 2's name
    with pytest.raises(UserError, match="the shards do not belong together"):
        Model.load(first)


def test_split_refuses_bad_sizes_and_existing_shards(shards):
    bad = runner.invoke(app, ["split", str(ensure_demo_gguf()), "-o", str(shards[0].parent / "x.gguf"),
                              "--max-size", "lots"])
    assert bad.exit_code == 1 and "is not a size" in bad.output
    again = runner.invoke(app, ["split", str(ensure_demo_gguf()), "-o", str(shards[0].parent / "demo.gguf"),
                                "--max-size", "3M", "--quiet"])
    assert again.exit_code == 1 and "already exist" in again.output
    assert not list(shards[0].parent.glob(".demo.*"))  # the temporary folder is gone


def test_quantize_reads_a_split_source_like_the_single_file(tmp_path):
    import hashlib

    from cli import run_quantize
    from localcoder.gguf_split import split_gguf

    f32 = ensure_demo_gguf("F32")
    shards = split_gguf(f32, tmp_path / "f32.gguf", 8_000_000, show_progress=False)
    assert len(shards) > 1
    a = run_quantize(f32, tmp_path / "a.gguf", "Q4_K_M", [], None, False, True, False).out
    b = run_quantize(shards[0], tmp_path / "b.gguf", "Q4_K_M", [], None, False, True, False).out
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
