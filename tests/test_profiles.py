"""Hardware profiles: every shipped file validates, broken ones fail with a clear one-line error, the CLI lists
and shows them, and the wheel ships them."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from localcoder.errors import UserError
from localcoder.profiles import (PROFILES_DIR, embedding_in_ram, get_profile, hybrid_placement, load_profile,
                                 not_built, shipped_profiles)

REQUIRED = {"m4-mac-mini-64gb", "dual-rtx-5090", "dgx-spark", "laptop-8gb", "gpu-16gb", "gpu-24gb", "cpu-only"}
runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def test_every_required_profile_ships_and_validates():
    profiles = shipped_profiles()
    assert REQUIRED <= set(profiles)
    for name, p in profiles.items():
        assert p.name == name and p.path.parent == PROFILES_DIR
        assert p.placement[-1].tensors is None and p.placement[-1].layers is None


def test_placement_rules_put_tensors_where_the_profiles_say(tmp_path):
    dual = get_profile("dual-rtx-5090")
    assert dual.device_of("blk.3.attn_q.weight", 3) == "cuda:0"
    assert dual.device_of("blk.30.ffn_up_exps.weight", 30) == "cuda:1"
    assert dual.device_of("token_embd.weight", None) == "cuda:0"
    assert dual.device_of("output.weight", None) == "cuda:1"
    hybrid = get_profile("gpu-16gb")
    assert hybrid.device_of("blk.7.ffn_down_exps.weight", 7) == "cpu"
    assert hybrid.device_of("blk.7.ffn_down_shexp.weight", 7) == "cuda:0"
    assert get_profile("cpu-only").devices == ["cpu"]
    assert not_built(get_profile("cpu-only")) is None
    assert not_built(get_profile("dgx-spark")) is None  # the llama.cpp engine (llama-cpp-python is installed)
    for name in ("gpu-16gb", "gpu-24gb", "laptop-8gb"):  # the hybrid runtime (torch is installed)
        assert not_built(get_profile(name)) is None and hybrid_placement(get_profile(name)), name
        assert embedding_in_ram(get_profile(name))
    assert not_built(get_profile("dual-rtx-5090")) is None  # the CUDA backend's layer split (torch is installed)
    ram_and_two_gpus = tmp_path / "dual-rtx-5090.toml"
    ram_and_two_gpus.write_text((PROFILES_DIR / "dual-rtx-5090.toml").read_text().replace(
        'tensors = "token_embd"\ndevice = "cuda:0"', 'tensors = "token_embd"\ndevice = "cpu"'))
    assert "CPU placement" in not_built(load_profile(ram_and_two_gpus))  # two GPUs and RAM: not the hybrid runtime


GOOD = (PROFILES_DIR / "gpu-16gb.toml").read_text()
BROKEN = {
    "unknown key": (GOOD.replace("batch = 1024", "batchsize = 1024"), "unknown key 'batchsize'"),
    "wrong type": (GOOD.replace("context = 65536", 'context = "64k"'), "context must be int"),
    "bad engine": (GOOD.replace('engine = "localcoder"', 'engine = "vllm"'), "engine 'vllm' is not one of"),
    "bad kv": (GOOD.replace('kv_cache = "f16"', 'kv_cache = "q4"'), "kv_cache 'q4'"),
    "bad recipe": (GOOD.replace('recipe = "hybrid-q3k"', 'recipe = "Q9_K"'), "recipe 'Q9_K'"),
    "bad regex": (GOOD.replace('"ffn_(gate|up|down)_exps|token_embd"', '"ffn_(gate"'), "not a regular expression"),
    "bad device": (GOOD.replace('device = "cuda:0"', 'device = "tpu"'), "is not cpu, gpu or cuda:N"),
    "no catch-all": (GOOD.replace('[[placement]]\ndevice = "cuda:0"', '[[placement]]\ntensors = "x"\ndevice = "cuda:0"'),
                     "last placement rule"),
    "gpu beyond count": (GOOD.replace('device = "cuda:0"', 'device = "cuda:1"'), "cuda:1 but requires 1"),
    "missing field": (GOOD.replace('recipe = "hybrid-q3k"\n', ""), "missing recipe"),
    "negative cache": (GOOD.replace("expert_cache_gib = 9.0", "expert_cache_gib = -1"), "expert_cache_gib must be >= 0"),
    "bad threads": (GOOD.replace('threads = "auto"', 'threads = "many"'), 'threads must be "auto"'),
    "bad layers": (GOOD.replace('tensors = "ffn_(gate|up|down)_exps|token_embd"', 'layers = "9-2"'),
                   "is not a range"),
    "not toml": (GOOD.replace("[requires]", "[requires"), "not valid TOML"),
    "accelerator none with gpus": (GOOD.replace('accelerator = "cuda"', 'accelerator = "none"'), "need an accelerator"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_profiles_fail_with_a_clear_error(tmp_path, case):
    text, message = BROKEN[case]
    path = tmp_path / "gpu-16gb.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_profile(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_name_must_match_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    with pytest.raises(UserError, match="differs from the file name 'mine'"):
        load_profile(path)


def test_profiles_cli_lists_and_shows():
    listed = runner.invoke(app, ["profiles", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    for name in REQUIRED:
        assert name in listed.output
    shown = runner.invoke(app, ["profiles", "show", "gpu-16gb"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert re.search(r"routed experts\s+│\s+cpu\s+│\s+1[0-9]{2}", shown.output)  # 48 layers x 3 expert tensors
    assert "cuda:0" in shown.output and "hybrid-q3k" in shown.output
    missing = runner.invoke(app, ["profiles", "show", "nope"])
    assert missing.exit_code == 1 and "no profile 'nope'" in missing.output


def test_the_wheel_ships_every_profile_and_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("localcoder-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in REQUIRED:
        assert f"localcoder/profile_data/{name}.toml" in names
    assert "quant/recipes.toml" in names
    for init in sorted((REPO / "localcoder").rglob("__init__.py")):  # every subpackage, e.g. cuda and hybrid
        assert init.relative_to(REPO).as_posix() in names
