"""`localcoder bench`: the cost model's decode prediction against measured speed on the test models, the
command's JSON and tables, the llama.cpp comparison, and `serve --profile`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localcoder.errors import UserError

REPO = Path(__file__).resolve().parent.parent
KQUANT_TEST_MODEL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                         head_dim=128, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=128,
                         linear_value_head_dim=128, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=256,
                         shared_expert_intermediate_size=256, vocab_size=1024,
                         layer_types=["linear_attention"] * 3 + ["full_attention"])


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private LOCALCODER_HOME: the demo model, the micro models and the saved bench report live there."""
    path = tmp_path_factory.mktemp("home")
    old = os.environ.get("LOCALCODER_HOME")
    os.environ["LOCALCODER_HOME"] = str(path)
    yield path
    if old is None:
        del os.environ["LOCALCODER_HOME"]
    else:
        os.environ["LOCALCODER_HOME"] = old


@pytest.fixture(scope="module")
def models(home):
    """The demo model (Q8_0) and a K-quant model (llama.cpp's Q4_K_M mix, Q4_K and Q6_K tensors)."""
    from localcoder.demo import ensure_demo_gguf
    from localcoder.synth import write_synthetic
    from quant.recipes import QWEN3_CODER_NEXT

    kquant = home / "kquant-q4km.gguf"
    write_synthetic(kquant, {**QWEN3_CODER_NEXT, **KQUANT_TEST_MODEL}, "Q4_K_M", show_progress=False)
    return {"demo Q8_0": ensure_demo_gguf(show_progress=False), "K-quant Q4_K_M": kquant}


@pytest.fixture(scope="module")
def calibration(models):
    from localcoder.bench import calibrate
    from localcoder.costmodel import Footprint
    from localcoder.hardware import probe

    machine = probe()
    types = {t.qtype for p in models.values() for t in Footprint.from_gguf(p).tensors if t.outputs}
    return machine, calibrate(machine, 2, sorted(types))


@pytest.mark.parametrize("name", ["demo Q8_0", "K-quant Q4_K_M"])
def test_decode_prediction_is_within_30_percent_of_measured(models, calibration, name):
    from localcoder.bench import measure
    from localcoder.costmodel import Footprint, predict
    from localcoder.profiles import get_profile

    machine, cal = calibration
    profile = get_profile("cpu-only")
    measured = measure(models[name], profile, prompt=128, generate=64, threads=2, repeats=3)
    predicted = predict(profile, Footprint.from_gguf(models[name]), machine, cal, context=160, prompt=128)
    assert 0.7 < predicted.decode_tps / measured.decode_tps < 1.3, (predicted.decode_tps, measured.decode_tps)
    assert predicted.decode_tps <= predicted.decode_bound_tps
    assert 0.4 < predicted.prefill_tps / measured.prefill_tps < 2.5, (predicted.prefill_tps, measured.prefill_tps)


def localcoder(*args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCALCODER_HOME": str(home), "COLUMNS": "220"}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def bench_run(models, home):
    """`localcoder bench DEMO --json --compare`, run once."""
    return localcoder("bench", str(models["demo Q8_0"]), "--json", "--compare", "--prompt", "128", "--gen", "32",
                      home=home)


def test_bench_json_on_the_demo_model_with_llama_cpp(bench_run, models, home):
    done = bench_run
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["recommended"] == "cpu-only"
    rows = {r["name"]: r for r in report["profiles"]}
    assert set(rows) >= {"cpu-only", "gpu-16gb", "m4-mac-mini-64gb"}
    ours, llama = rows["cpu-only"]["measured"], rows["cpu-only"]["llamacpp"]
    assert ours["decode_tps"] > 0 and ours["prefill_tps"] > 0 and llama["decode_tps"] > 0
    assert rows["gpu-16gb"]["measured"] is None and rows["gpu-16gb"]["runnable"] is True  # built; no GPU here
    assert report["calibration"]["decode_kernels"]["Q8_0"]["mac_s"] > 0
    assert "profiles on this machine" in done.stderr and "localcoder vs llama.cpp" in done.stderr
    assert "recommended profile: cpu-only" in done.stderr
    saved = json.loads((home / "bench-last.json").read_text())
    assert saved["recommended"] == "cpu-only" and saved["model"] == str(models["demo Q8_0"])


def test_serve_profile_auto_follows_the_saved_bench(bench_run, models):
    from localcoder.server.launch import apply_profile, load_engine

    assert bench_run.returncode == 0, bench_run.stderr
    profile, why = apply_profile("auto", models["demo Q8_0"])
    assert profile.name == "cpu-only" and "last `localcoder bench`" in why
    engine, _ = load_engine(models["demo Q8_0"], profile.context, profile.threads, 0.1, 4,
                            n_batch=profile.batch, clamp_ctx=True)
    try:
        assert engine.model.n_batch == profile.batch
        assert engine.model.n_ctx == 8192  # the profile's 32768, clamped to what the demo model was trained for
    finally:
        engine.close()
    profile, why = apply_profile("auto", models["K-quant Q4_K_M"])  # no bench for this model: predicted
    assert profile.name == "cpu-only" and "predicted" in why


def test_serve_refuses_a_profile_this_machine_or_build_cannot_run(models):
    from localcoder.server.launch import apply_profile

    with pytest.raises(UserError, match="profile gpu-16gb cannot run here: needs a CUDA GPU"):
        apply_profile("gpu-16gb", models["demo Q8_0"])
    with pytest.raises(UserError, match="no profile 'fastest'"):
        apply_profile("fastest", models["demo Q8_0"])


def test_bench_predicts_for_a_described_machine(tmp_path, home):
    mac = {"cpu": "Apple M4 Pro", "cores": 14, "ram_gib": 64, "ram_bandwidth_gbs": 273,
           "gpus": [{"name": "Apple M4 Pro", "kind": "metal", "vram_gib": 64, "unified": True}]}
    (tmp_path / "mac.json").write_text(json.dumps(mac))
    done = localcoder("bench", "--machine", str(tmp_path / "mac.json"), "--json", home=home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["best_for_hardware"] == report["recommended"] == "m4-mac-mini-64gb"  # the llama.cpp engine runs it
    (tmp_path / "bad.json").write_text("{not json")
    bad = localcoder("bench", "--machine", str(tmp_path / "bad.json"), home=home)
    assert bad.returncode == 1 and "is not valid JSON" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_of_a_missing_file_is_a_one_line_error(tmp_path, home):
    done = localcoder("bench", str(tmp_path / "missing.gguf"), home=home)
    assert done.returncode == 1 and "does not exist" in done.stderr and "Traceback" not in done.stderr
