"""The recommender on described machines, the cost model's memory accounting against independent sums, and
the hardware description and probe."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from localcoder.costmodel import Footprint, memory_needs, predict, recommend
from localcoder.errors import UserError
from localcoder.hardware import GIB, Machine, parse_pcie_links, probe, ram_bandwidth
from localcoder.profiles import get_profile, shipped_profiles

MACHINES = {
    "a 64 GB Mac mini (M4 Pro)": (dict(cpu="Apple M4 Pro", cores=14, ram_gib=64, ram_bandwidth_gbs=273, gpus=[
        dict(name="Apple M4 Pro", kind="metal", vram_gib=64, unified=True)]), "m4-mac-mini-64gb"),
    "a 16 GB GPU laptop with 64 GB RAM": (dict(cpu="Intel Core i9-14900HX", cores=24, ram_gib=64,
                                               ram_bandwidth_gbs=70, gpus=[
        dict(name="NVIDIA GeForce RTX 4090 Laptop GPU", kind="cuda", vram_gib=15.99)]), "gpu-16gb"),
    "2 x 32 GB GPUs": (dict(cpu="AMD Ryzen 9 9950X", cores=16, ram_gib=128, ram_bandwidth_gbs=80, gpus=[
        dict(name="NVIDIA GeForce RTX 5090", kind="cuda", vram_gib=31.4)] * 2), "dual-rtx-5090"),
    "a 128 GB unified-memory machine (DGX Spark)": (dict(cpu="Cortex-X925", cores=20, ram_gib=119.7,
                                                         ram_bandwidth_gbs=273, gpus=[
        dict(name="NVIDIA GB10", kind="cuda", vram_gib=119.7, unified=True)]), "dgx-spark"),
    "CPU only, 96 GB": (dict(cpu="AMD Ryzen 9 7950X", cores=16, ram_gib=96, ram_bandwidth_gbs=70), "cpu-only"),
    "a 24 GB card with 64 GB RAM": (dict(cpu="AMD Ryzen 7 7800X3D", cores=8, ram_gib=64, ram_bandwidth_gbs=60, gpus=[
        dict(name="NVIDIA GeForce RTX 4090", kind="cuda", vram_gib=23.99)]), "gpu-24gb"),
    "an 8 GB laptop with 32 GB RAM": (dict(cpu="AMD Ryzen 7 7840HS", cores=8, ram_gib=32, ram_bandwidth_gbs=60, gpus=[
        dict(name="NVIDIA GeForce RTX 4060 Laptop GPU", kind="cuda", vram_gib=7.996)]), "laptop-8gb"),
}


def predictions_for(machine: Machine) -> tuple[dict, dict]:
    profiles = shipped_profiles()
    return profiles, {n: predict(p, Footprint.for_recipe(p.recipe), machine) for n, p in profiles.items()}


@pytest.mark.parametrize("described", sorted(MACHINES))
def test_recommender_picks_the_profile_made_for_the_machine(described):
    spec, expected = MACHINES[described]
    profiles, predictions = predictions_for(Machine.from_json(spec))
    assert recommend(profiles, predictions) == expected
    best = predictions[expected]
    assert best.fits and best.reason is None
    assert 0 < best.decode_tps <= best.decode_bound_tps and 0 < best.prefill_tps <= best.prefill_bound_tps


def test_a_machine_too_small_for_every_profile_gets_none_and_reasons():
    spec = dict(cpu="old laptop", cores=4, ram_gib=16, ram_bandwidth_gbs=20)
    profiles, predictions = predictions_for(Machine.from_json(spec))
    assert recommend(profiles, predictions) is None
    assert "GiB of RAM" in predictions["cpu-only"].reason
    assert predictions["gpu-16gb"].reason == "needs a CUDA GPU"
    assert predictions["dual-rtx-5090"].decode_tps == 0.0  # no speeds for a machine that lacks the hardware


def test_runnable_only_skips_profiles_this_build_cannot_run(monkeypatch):
    import importlib.util

    spec, _ = MACHINES["a 16 GB GPU laptop with 64 GB RAM"]
    profiles, predictions = predictions_for(Machine.from_json(spec))
    assert recommend(profiles, predictions, runnable_only=True) == "gpu-16gb"  # the hybrid runtime
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert recommend(profiles, predictions, runnable_only=True) == "cpu-only"  # a build without torch


def test_more_vram_in_the_cache_predicts_more_hits_and_faster_decode():
    spec, _ = MACHINES["a 24 GB card with 64 GB RAM"]
    machine = Machine.from_json(spec)
    fp = Footprint.for_recipe("hybrid-q4k")
    small = predict(get_profile("gpu-16gb"), fp, machine)
    large = predict(get_profile("gpu-24gb"), fp, machine)
    assert small.expert_hit_rate == pytest.approx(9 * GIB / fp.expert_bytes)
    assert large.expert_hit_rate > small.expert_hit_rate and large.decode_tps > small.decode_tps


def test_memory_needs_add_up_to_weights_kv_and_buffers():
    from quant.recipes import QWEN3_CODER_NEXT, model_size_bytes

    fp = Footprint.for_recipe("hybrid-q4k")
    assert fp.nbytes == model_size_bytes("hybrid-q4k")  # every tensor of the model counted once
    assert fp.n_layer == QWEN3_CODER_NEXT["num_hidden_layers"] and len(fp.attention_layers) == 12
    profile = get_profile("cpu-only")
    need = memory_needs(profile, fp)
    kv = 12 * profile.context * 2 * QWEN3_CODER_NEXT["num_key_value_heads"] * QWEN3_CODER_NEXT["head_dim"] * 4
    state = 36 * 4 * (32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128))
    assert need == {"cpu": fp.nbytes + kv + state + GIB // 2 + int(profile.prefix_cache_gib * GIB)}


def test_footprint_of_a_file_counts_its_tensors_and_reads(tmp_path):
    from localcoder.demo import ensure_demo_gguf
    from localcoder.gguf_model import load_fields, model_args

    path = ensure_demo_gguf()
    fp = Footprint.from_gguf(path)
    fields, reader = load_fields(path)
    args = model_args(fields)
    assert fp.nbytes == sum(int(t.n_bytes) for t in reader.tensors)
    experts = [t for t in fp.tensors if t.expert]
    assert len(experts) == 3 * args.n_layer
    for t in experts:
        assert t.active_bytes == pytest.approx(t.nbytes * args.n_expert_used / args.n_expert)


def test_described_machine_errors_are_one_line():
    with pytest.raises(UserError, match="machine description"):
        Machine.from_json({"cpu": "x"})


def test_probe_describes_this_machine():
    m = probe(measure=False)
    assert m.ram_bytes == psutil.virtual_memory().total and m.cores >= 1 and m.cpu
    assert m.gpus == [] or all(g.vram_bytes > 0 for g in m.gpus)


def test_ram_bandwidth_reads_every_byte():
    from localcoder.hardware import _parallel_sum, _sum_reference

    a = np.random.default_rng(0).random(1 << 20).astype(np.float32)
    assert _parallel_sum()(a) == pytest.approx(_sum_reference(a), rel=1e-5)
    assert ram_bandwidth(8 << 20, repeats=2) > 0


def test_nvidia_smi_link_parsing():
    text = "0, 4, 16\n1, 5, 8\nnot a line\n"
    assert parse_pcie_links(text) == {0: "gen4 x16", 1: "gen5 x8"}


def test_unified_memory_bounds_what_the_gpu_holds(tmp_path):
    """On a 48 GB Mac the Q3 mix (39 GiB on the GPU) fits in RAM but not in the ~75% macOS lets the GPU wire."""
    from localcoder.profiles import PROFILES_DIR, load_profile

    path = tmp_path / "m4-mac-mini-64gb.toml"
    path.write_text((PROFILES_DIR / path.name).read_text().replace("min_ram_gib = 60", "min_ram_gib = 40"))
    mac48 = Machine.from_json(dict(cpu="Apple M4 Pro", cores=14, ram_gib=48, ram_bandwidth_gbs=273, gpus=[
        dict(name="Apple M4 Pro", kind="metal", vram_gib=48, unified=True)]))
    prediction = predict(load_profile(path), Footprint.for_recipe("hybrid-q3k"), mac48)
    assert not prediction.fits and "of memory the GPU may use, 36.0 GiB usable" in prediction.reason
