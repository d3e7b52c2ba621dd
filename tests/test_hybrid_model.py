"""The hybrid runtime against the CUDA backend with every expert on the device: the same logits at every expert
budget and miss path (prefill and decode), the budget never exceeded, every copied byte counted, pinned experts
resident, router traces recorded. The device is the GPU where there is one, else the CPU standing in for it
(slots in host memory, Triton's interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_setup import DEVICE  # first: sets up the interpreter where there is no GPU
from localcoder.cuda.model import TorchModel
from localcoder.errors import UserError
from localcoder.hybrid.model import HybridModel, MissCosts
from localcoder.hybrid.simulate import hottest, load_trace, replay

PROMPT, DECODE = [3, 17, 99], [250, 7]
CPU_ONLY = MissCosts(pcie_gbs=1e-6)  # copying is hopeless: every miss computed on the CPU
STREAM_ONLY = MissCosts(ram_gbs=1e-6)  # the CPU is hopeless: every miss streamed to the device


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from localcoder.synth import write_synthetic
    from quant.recipes import QWEN3_CODER_NEXT
    from test_bench import KQUANT_TEST_MODEL

    path = tmp_path_factory.mktemp("hybrid") / "q4km.gguf"
    write_synthetic(path, {**QWEN3_CODER_NEXT, **KQUANT_TEST_MODEL}, "Q4_K_M", show_progress=False)
    return path


def run(model) -> np.ndarray:
    session = model.new_session()
    return np.stack([session.feed(PROMPT)] + [session.feed([t]) for t in DECODE])


@pytest.fixture(scope="module")
def expected(model_file):
    return run(TorchModel.load(model_file, DEVICE, exact=True))


def per_expert_bytes(model: HybridModel) -> int:
    return sum(model.slots.expert_bytes.values())


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.parametrize("slots,costs", [(0, CPU_ONLY), (0, STREAM_ONLY), (10, None), (1000, None)])
def test_logits_are_the_same_at_every_budget(model_file, expected, slots, costs):
    probe = HybridModel(model_file, DEVICE, 0)
    budget = slots * per_expert_bytes(probe) + per_expert_bytes(probe) // 2
    model = HybridModel(model_file, DEVICE, budget, costs=costs, exact=True)
    assert_same(run(model), expected)
    assert model.slots.nbytes <= budget and model.slots.n_slots == min(slots, 4 * 32)
    stats = model.cache.stats.values()
    admitted = sum(s.admissions for s in stats)
    copied = sum(model.cache.stats[layer].admissions * model._bytes_per_expert(layer) for layer in range(4))
    assert model.slots.bytes_copied == copied
    misses = sum(s.misses for s in stats) - admitted
    if costs is CPU_ONLY:
        assert model.misses.cpu_experts == misses > 0 and model.misses.streamed_experts == 0
    if costs is STREAM_ONLY:
        assert model.misses.streamed_experts == misses > 0 and model.misses.cpu_experts == 0
    if slots == 1000:  # everything fits: every miss is a first use, admitted
        assert misses == 0 and sum(s.evictions for s in stats) == 0


def test_pinned_experts_embedding_in_ram_and_traces(model_file, expected, tmp_path):
    pinned = [(layer, e) for layer in range(4) for e in range(3)]
    model = HybridModel(model_file, DEVICE, 12 * 300_000, pinned=pinned, exact=True, embedding_in_ram=True)
    assert model.slots.bytes_copied == sum(model._bytes_per_expert(layer) * 3 for layer in range(4))
    assert_same(run(model), expected)
    assert all(key in model.cache.slot_of for key in pinned)
    trace = model.router_trace()
    assert trace.shape == (len(PROMPT) + len(DECODE), 4, 4) and trace.max() < 32
    assert all(len(set(row)) == 4 for row in trace.reshape(-1, 4))  # top-k: distinct experts per token
    assert sum(s.hits + s.misses for s in model.cache.stats.values()) == sum(
        len(np.unique(trace[:len(PROMPT), layer])) + sum(1 for _ in trace[len(PROMPT):, layer].reshape(-1))
        for layer in range(4))
    assert 0 <= replay(trace, "frequency", 16, 32) <= 1
    saved = tmp_path / "router.npy"
    model.save_trace(saved)
    model.save_trace(saved)  # a second run adds its tokens
    assert np.array_equal(load_trace(saved), np.concatenate([trace, trace]))
    repinned = HybridModel(model_file, DEVICE, 8 * 300_000, pin_from=load_trace(saved))
    assert sorted(repinned.cache.pinned) == sorted(hottest(trace, repinned.slots.n_slots // 2))
    with pytest.raises(UserError, match="recorded on another model"):
        HybridModel(model_file, DEVICE, 8 * 300_000, pin_from=np.concatenate([trace, trace], axis=1))
    assert [what for what, _ in model.plan()] == ["attention, DeltaNet, shared experts, router, output",
                                                   "routed experts", "expert cache", "misses", "token embedding"]
    assert "token_embd.weight" not in model.w


def test_metrics_and_plan_report_the_cache(model_file, capsys):
    from cli import print_plan
    from localcoder.server.app import expert_cache_lines

    model = HybridModel(model_file, DEVICE, 4 * 300_000, costs=CPU_ONLY, exact=True)
    model.new_session().feed(PROMPT)
    text = "\n".join(expert_cache_lines(model))
    for layer in range(4):
        stats = model.cache.stats[layer]
        assert f'localcoder_expert_cache_hits_total{{layer="{layer}"}} {stats.hits}' in text
        assert f'localcoder_expert_cache_misses_total{{layer="{layer}"}} {stats.misses}' in text
    assert f"localcoder_expert_misses_cpu_total {model.misses.cpu_experts}" in text and model.misses.cpu_experts
    assert f"localcoder_expert_cache_copied_bytes_total {model.slots.bytes_copied}" in text
    assert f"localcoder_expert_misses_cpu_seconds_total {model.misses.cpu_seconds}" in text
    assert model.misses.cpu_seconds > 0 and model.misses.copy_seconds > 0  # 4 slots were filled
    from localcoder.bench import expert_lookups
    stats = model.cache.stats.values()
    assert expert_lookups(model) == (sum(s.hits for s in stats), sum(s.hits + s.misses for s in stats)) != (0, 0)
    assert expert_cache_lines(TorchModel.load(model_file, DEVICE)) == []
    print_plan(model)
    printed = capsys.readouterr().err
    assert "expert cache" in printed and f"{model.slots.n_slots} slots" in printed


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the message given where there is no GPU")
def test_without_a_gpu_the_hybrid_backend_says_so(model_file):
    from localcoder.model import Model

    with pytest.raises(UserError, match="the hybrid runtime needs a CUDA GPU"):
        Model.load(model_file, backend="hybrid", expert_cache_gib=1)
