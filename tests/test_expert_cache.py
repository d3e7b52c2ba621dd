"""The expert cache's policy (hybrid/policy.py) and the trace simulator (hybrid/simulate.py), on hand-made and
synthetic router traces: no device needed."""

from __future__ import annotations

import numpy as np
import pytest

from localcoder.hybrid.policy import ExpertCache
from localcoder.errors import UserError
from localcoder.hybrid.simulate import hit_rate_table, hottest, load_trace, replay, save_trace, synthetic_trace


def step(cache: ExpertCache, layer: int, experts: list[int]) -> tuple[dict, list]:
    hits, misses = cache.lookup(layer, {e: 1 for e in experts})
    for e in misses:
        cache.admit(layer, e)
    cache.tick()
    return hits, misses


def test_a_hot_expert_survives_a_scan_of_cold_ones():
    cache = ExpertCache(2, decay=0.9)
    for _ in range(5):
        step(cache, 0, [7])
    for cold in range(100, 108):  # each used once: colder than expert 7 (about 4.1 x 0.9^8 = 1.8)
        step(cache, 0, [cold])
    assert (0, 7) in cache.slot_of  # LRU would have dropped it at the second cold expert
    assert cache.stats[0].hits == 4 and cache.stats[0].evictions == 7
    for cold in range(200, 212):  # long unused, it decays below a count of 1 and goes
        step(cache, 0, [cold])
    assert (0, 7) not in cache.slot_of


def test_admission_needs_a_hotter_count_and_ties_go_to_the_recent():
    cache = ExpertCache(1, decay=1.0)
    step(cache, 0, [1])
    step(cache, 0, [1])
    step(cache, 0, [2])
    assert (0, 1) in cache.slot_of and (0, 2) not in cache.slot_of  # 1 use does not beat 2
    step(cache, 0, [2])
    assert (0, 2) in cache.slot_of  # 2 uses each: the more recent wins


def test_decay_lets_a_new_favourite_replace_an_old_one():
    cache = ExpertCache(1, decay=0.5)
    for _ in range(10):
        step(cache, 3, [1])
    for _ in range(3):
        step(cache, 3, [9])
    assert list(cache.slot_of) == [(3, 9)]


def test_experts_in_use_this_step_and_pinned_experts_stay():
    cache = ExpertCache(3, decay=1.0, pinned=[(0, 5)])
    hits, misses = cache.lookup(0, {1: 1, 2: 1, 3: 5, 4: 5})
    admitted = [cache.admit(0, e) for e in misses]
    assert admitted[:2] == [(1, None), (2, None)]  # the free slots (the pinned expert took slot 0)
    assert admitted[2:] == [None, None]  # 3 and 4 are hotter, but 1 and 2 are being read in this step
    cache.tick()
    cache.lookup(0, {3: 5})
    slot, victim = cache.admit(0, 3)
    assert victim in {(0, 1), (0, 2)} and (0, 5) in cache.slot_of
    with pytest.raises(ValueError, match="pinned"):
        ExpertCache(1, pinned=[(0, 1), (0, 2)])


def test_stats_count_every_lookup():
    cache = ExpertCache(4)
    for s in range(10):
        step(cache, s % 2, [s % 3, 3])
    total = sum(st.hits + st.misses for st in cache.stats.values())
    assert total == 20 and sum(st.admissions for st in cache.stats.values()) == len(cache.slot_of) + sum(
        st.evictions for st in cache.stats.values())


def test_static_split_hits_the_resident_layers_share():
    trace = synthetic_trace(50, 8, 16, 2, seed=1)
    assert replay(trace, "static", 3 * 16 + 5, 16) == 3 / 8  # three whole layers fit


def test_uniform_routing_gives_every_policy_about_the_cache_share():
    trace = synthetic_trace(400, 4, 64, 4, seed=2)
    for row in hit_rate_table(trace, 64, fractions=(0.25, 0.5)):
        for policy in ("frequency", "lfu"):
            assert abs(row[policy] - row["fraction"]) < 0.05, row


def test_skewed_routing_rewards_frequency_over_static_and_lru():
    trace = synthetic_trace(400, 8, 64, 4, skew=1.0, seed=3)
    row = hit_rate_table(trace, 64, fractions=(0.1,))[0]
    assert row["frequency"] > row["static"] + 0.2 and row["frequency"] > row["lru"] + 0.1, row


def test_synthetic_traces_have_distinct_experts_and_locality():
    trace = synthetic_trace(200, 2, 32, 4, locality=0.8, seed=4)
    assert all(len(set(trace[s, layer])) == 4 for s in range(200) for layer in range(2))
    repeated = np.mean([len(set(trace[s, 0]) & set(trace[s - 1, 0])) for s in range(1, 200)])
    assert repeated > 2.5  # ~0.8 of 4 slots kept, plus chance


def test_cache_sim_command_prints_hit_rates_and_refuses_bad_traces(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["cache-sim", "--steps", "30", "--layers", "4", "--experts", "32", "--top-k", "4"])
    assert done.exit_code == 0, done.output
    assert all(word in done.output for word in ("frequency", "lru", "lfu", "static", "25%"))
    np.save(tmp_path / "trace.npy", synthetic_trace(20, 4, 32, 4))
    done = runner.invoke(app, ["cache-sim", "--trace", str(tmp_path / "trace.npy"), "--experts", "32"])
    assert done.exit_code == 0 and "20 tokens" in done.output, done.output
    np.save(tmp_path / "bad.npy", np.zeros((3, 3)))
    done = runner.invoke(app, ["cache-sim", "--trace", str(tmp_path / "bad.npy")])
    assert done.exit_code == 1 and "is not a router trace" in done.output


def test_hottest_experts_and_saved_traces(tmp_path):
    trace = np.array([[[1, 2], [5, 6]], [[1, 3], [5, 7]], [[1, 2], [5, 4]]])  # [tokens, layers, top_k]
    assert set(hottest(trace, 2)) == {(0, 1), (1, 5)}  # three uses each; the rest at most two
    path = tmp_path / "trace.npy"
    save_trace(path, trace)
    save_trace(path, trace[:1])
    assert np.array_equal(load_trace(path), np.concatenate([trace, trace[:1]]))
    assert not (tmp_path / "trace.npy.partial").exists()
    with pytest.raises(UserError, match="experts below 4"):
        load_trace(path, n_expert=4)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="cannot read the router trace"):
        load_trace(tmp_path / "junk.npy")
