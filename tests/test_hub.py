"""The Hub, offline: huggingface_hub's own code resolves repositories from a cache folder laid out as it lays
them out (blobs, snapshots, refs, the tree listing), with HF_HUB_OFFLINE=1. File selection, quant selection,
split GGUFs, incomplete snapshots, missing repositories, and `quantize REPO_ID` equal to quantizing the folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localcoder.demo import build_demo_checkpoint, ensure_demo_gguf
from localcoder.errors import UserError

REPO = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo: str, files: dict[str, Path], listed_only: tuple[str, ...] = ()) -> Path:
    """Lay `files` (path in the repo -> local file) out as huggingface_hub caches a downloaded snapshot, with the
    tree listing of the commit; `listed_only` are in the listing but were never downloaded."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    entries = {}
    for rel, src in files.items():
        data = Path(src).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        blob = root / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        entries[rel] = TreeCacheEntry(len(data), hashlib.sha1(data).hexdigest(), sha, len(data))
    for rel in listed_only:
        entries[rel] = TreeCacheEntry(1000, "0" * 40, "1" * 64, 1000)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    write_tree_cache(str(root), COMMIT, entries)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """An HF cache holding a checkpoint repo (plus files pull must not select), a GGUF repo with a single-file
    Q8_0 and a split Q4_K_M in a subfolder, and a GGUF repo whose Q6_K download stopped halfway."""
    from localcoder.gguf_split import split_gguf

    home = tmp_path_factory.mktemp("hf")
    work = tmp_path_factory.mktemp("src")
    ckpt = build_demo_checkpoint(work / "demo")
    cache = home / "hub"
    cache_repo(cache, "acme/Demo", {p.name: p for p in ckpt.iterdir() if p.is_file()},
               listed_only=("original/consolidated.pth",))  # in the repo, never downloaded: pull must not need it
    q8 = ensure_demo_gguf("Q8_0")
    shards = split_gguf(q8, work / "Demo-Q4_K_M.gguf", 6_000_000, show_progress=False)  # stands in for a Q4_K_M
    files = {"Demo-Q8_0.gguf": q8, **{f"Q4_K_M/{p.name}": p for p in shards}}
    cache_repo(cache, "acme/Demo-GGUF", files, listed_only=("Demo-Q2_K.gguf",))
    cache_repo(cache, "acme/Half-GGUF", {"Half-Q6_K-00001-of-00002.gguf": shards[0]},
               listed_only=("Half-Q6_K-00002-of-00002.gguf",))
    return {"home": home, "checkpoint": ckpt, "shards": shards}


@pytest.fixture
def offline(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache["home"] / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("LOCALCODER_HOME", str(hub_cache["home"] / "localcoder"))
    return hub_cache


def test_a_checkpoint_pull_selects_weights_config_and_tokenizer(offline):
    from localcoder.hub import pull

    folder = pull("acme/Demo", show_progress=False)
    assert folder.name == "Demo" and (folder / "config.json").is_file()  # named after the repo, linking the snapshot
    assert (folder / "config.json").resolve().parent.name == "blobs"
    assert (folder / "tokenizer.json").is_file() and list(folder.glob("*.safetensors"))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError
    with pytest.raises(IncompleteSnapshotError):  # the listing is live: the whole repo is not in the cache
        snapshot_download("acme/Demo")


def test_a_gguf_pull_selects_the_quant_single_or_split(offline):
    from localcoder.hub import pull

    assert pull("acme/Demo-GGUF:Q8_0", show_progress=False).name == "Demo-Q8_0.gguf"
    first = pull("acme/Demo-GGUF:q4_k_m", show_progress=False)
    assert first.parent.name == "Q4_K_M" and first.name == offline["shards"][0].name


def test_unknown_quants_and_repos_have_clear_messages(offline):
    from localcoder.hub import pull

    with pytest.raises(UserError, match="incomplete"):  # listed on the Hub, not downloaded (offline)
        pull("acme/Demo-GGUF:Q2_K", show_progress=False)
    with pytest.raises(UserError, match="acme/Demo-GGUF has no Q3_K_S GGUF .*it has Q4_K_M, Q8_0"):
        pull("acme/Demo-GGUF:Q3_K_S", show_progress=False)
    with pytest.raises(UserError, match="acme/Nothing is not in the Hugging Face cache .*HF_HUB_OFFLINE is set"):
        pull("acme/Nothing", show_progress=False)
    with pytest.raises(UserError, match="has no config.json.*add the quant, e.g. acme/Demo-GGUF:Q4_K_M"):
        pull("acme/Demo-GGUF", show_progress=False)
    with pytest.raises(UserError, match="not a Hub id"):
        pull("not a repo", show_progress=False)


def test_an_interrupted_download_is_reported_as_incomplete(offline):
    from localcoder.hub import pull

    with pytest.raises(UserError, match="incomplete .*Half-Q6_K-00002-of-00002.gguf.*downloads resume"):
        pull("acme/Half-GGUF:Q6_K", show_progress=False)


def localcoder(*args, home: Path, online: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with HF_HOME=home, offline unless `online` gives the endpoint's environment."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "LOCALCODER_HOME": str(home / "localcoder"), **(online or {})}
    env.pop("HF_HUB_CACHE", None)
    if online:
        env.pop("HF_HUB_OFFLINE")
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_quantize_a_repo_id_exactly_like_its_local_folder(hub_cache, tmp_path):
    local = tmp_path / "Demo"  # as `huggingface-cli download acme/Demo --local-dir Demo` leaves it
    shutil.copytree(hub_cache["checkpoint"], local)
    by_id = localcoder("quantize", "acme/Demo", "-t", "Q8_0", "-o", str(tmp_path / "id.gguf"), "-q",
                       home=hub_cache["home"])
    assert by_id.returncode == 0, by_id.stderr
    by_path = localcoder("quantize", str(local), "-t", "Q8_0", "-o", str(tmp_path / "path.gguf"),
                         "-q", home=hub_cache["home"])
    assert by_path.returncode == 0, by_path.stderr
    assert (tmp_path / "id.gguf").read_bytes() == (tmp_path / "path.gguf").read_bytes()


def test_pull_run_and_inspect_take_hub_ids(hub_cache):
    pulled = localcoder("pull", "acme/Demo-GGUF:Q4_K_M", "-q", home=hub_cache["home"])
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().endswith(hub_cache["shards"][0].name)
    ran = localcoder("run", "acme/Demo-GGUF:Q4_K_M", "def add(a, b):", "-n", "4", "--temperature", "0",
                     home=hub_cache["home"])
    assert ran.returncode == 0, ran.stderr
    shown = localcoder("inspect", "acme/Demo-GGUF:Q8_0", "--json", home=hub_cache["home"])
    assert shown.returncode == 0 and '"n_tensors"' in shown.stdout
    needs_quant = localcoder("run", "acme/Demo", "hi", home=hub_cache["home"])
    assert needs_quant.returncode == 1 and "add the quant" in needs_quant.stderr
    assert "Traceback" not in needs_quant.stderr


def test_a_cut_download_resumes_where_it_stopped(tmp_path):
    """Online against a Hub on 127.0.0.1 that drops the connection 80% into the file: huggingface_hub asks for the
    rest with a Range request from what it had written (it writes in 10 MB pieces), so only the unwritten part is
    fetched again, and the file is whole. (huggingface_hub 2.x resumes within a run; a killed process starts the
    file again.)"""
    from fakehub import FakeHub

    q8 = ensure_demo_gguf("Q8_0")
    data = q8.read_bytes()
    with FakeHub({"acme/Demo-GGUF": {"Demo-Q8_0.gguf": q8}}, cut_once=("Demo-Q8_0.gguf",)) as hub:
        env = {"HF_ENDPOINT": hub.url}
        pulled = localcoder("pull", "acme/Demo-GGUF:Q8_0", "-q", home=tmp_path / "hf", online=env)
        assert pulled.returncode == 0, pulled.stderr
        cut = hub.cut_at(len(data))
        assert len(hub.range_starts) == 1 and 0 < hub.range_starts[0] <= cut
        assert hub.bytes_served == cut + len(data) - hub.range_starts[0]
        assert Path(pulled.stdout.strip()).read_bytes() == data
        missing = localcoder("pull", "acme/Nope", "-q", home=tmp_path / "hf", online=env)
        assert missing.returncode == 1 and "no repository acme/Nope on the Hub" in missing.stderr
        no_quant = localcoder("pull", "acme/Demo-GGUF:Q3_K_S", "-q", home=tmp_path / "hf", online=env)
        assert no_quant.returncode == 1 and "has no Q3_K_S GGUF" in no_quant.stderr
