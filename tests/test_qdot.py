"""Quantized-activation kernels (llama.cpp's CPU scheme) against ggml itself through ctypes and against numpy.

- Activation rounding (Q8_K, Q8_0, Q8_1) equals ggml's quantize_row_q8_K / _q8_0 / _q8_1 byte for byte.
- Each format's matmul equals ggml_vec_dot_<type>_q8_K / _q8_0 / _q8_1 on the same bytes (float summation order
  aside), and qmatmul_reference (gguf-py dequantization, float64).
- The SIMD block dot products equal their numpy meaning in every lowering (AVX-512, AVX2, generic IR), so the
  code other CPUs get is tested here too.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from numba import njit

from localcoder.kernels import qdot, simd
from quant.quantize import quantize

SEED = int.from_bytes(os.urandom(4), "little")
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
Q32_TYPES = [T.Q8_0, T.Q4_0, T.Q5_0, T.Q5_1]
ACT_BYTES = {"q8_K": 292, "q8_0": 34, "q8_1": 36}  # sizeof(block_q8_K), sizeof(block_q8_0), sizeof(block_q8_1)


def ggml_activation_format(qtype) -> str:
    return "q8_K" if qtype in K_TYPES else "q8_1" if qtype == T.Q5_1 else "q8_0"


def rng(*salt):
    return np.random.default_rng([SEED, *salt])


@pytest.fixture(scope="module")
def ggml_cpu():
    import llama_cpp

    lib = ctypes.CDLL(str(next((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu.so*"))))
    lib.ggml_cpu_init()  # fills the fp16 tables the vec_dot kernels read
    return lib


def ggml_activations(lib, x: np.ndarray, fmt: str) -> np.ndarray:
    fn = getattr(lib, f"quantize_row_{fmt}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    block = 256 if fmt == "q8_K" else 32
    out = np.zeros((x.shape[0], x.shape[1] // block * ACT_BYTES[fmt]), np.uint8)
    for t in range(x.shape[0]):
        fn(np.ascontiguousarray(x[t]).ctypes.data, out[t].ctypes.data, x.shape[1])
    return out


def ggml_vec_dots(lib, raw: np.ndarray, qtype, acts_bytes: np.ndarray, cols: int) -> np.ndarray:
    name = f"ggml_vec_dot_{qtype.name.lower()}_{ggml_activation_format(qtype)}".replace("_k_", "_K_")
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    out, s = np.zeros((acts_bytes.shape[0], raw.shape[0]), np.float32), ctypes.c_float()
    for t in range(acts_bytes.shape[0]):
        for r in range(raw.shape[0]):
            fn(cols, ctypes.byref(s), 0, raw[r].ctypes.data, 0, acts_bytes[t].ctypes.data, 0, 1)
            out[t, r] = s.value
    return out


def activations_like_a_model(n: int, cols: int, *salt) -> np.ndarray:
    x = rng(*salt).standard_t(3, (n, cols)).astype(np.float32)
    x[0, :256] = 0.0  # an all-zero block (scale 0)
    x[-1, 7] = 40.0  # an outlier that sets its block's scale
    return x


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q8_0, T.Q5_1])
def test_activation_rounding_equals_ggml(ggml_cpu, qtype):
    fmt = ggml_activation_format(qtype)
    x = activations_like_a_model(5, 1024, int(qtype))
    acts = qdot.quantize_activations(x, qtype)
    theirs = ggml_activations(ggml_cpu, x, fmt).reshape(5, -1, ACT_BYTES[fmt])
    half = lambda b: np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)  # noqa: E731
    if fmt == "q8_K":  # block_q8_K: float d, int8 qs[256], int16 bsums[16]
        d, q, bsums = theirs[..., :4], theirs[..., 4:260], theirs[..., 260:]
        assert np.array_equal(np.ascontiguousarray(bsums).view(np.int16).reshape(5, -1), acts.bsums), f"seed {SEED}"
        assert np.array_equal(np.ascontiguousarray(d).view(np.float32)[..., 0], acts.d)
    elif fmt == "q8_0":  # block_q8_0: half d, int8 qs[32]
        d, q = theirs[..., :2], theirs[..., 2:]
        assert np.array_equal(half(d), acts.d)
    else:  # block_q8_1: half d, half s (d * sum qs), int8 qs[32]
        d, s, q = theirs[..., :2], theirs[..., 2:4], theirs[..., 4:]
        assert np.array_equal(half(d), acts.d) and np.array_equal(half(s), acts.s), f"seed {SEED}"
    assert np.array_equal(np.ascontiguousarray(q).view(np.int8).reshape(5, -1), acts.q), f"seed {SEED}"


@pytest.mark.parametrize("qtype", K_TYPES + Q32_TYPES)
def test_qmatmul_equals_ggml_vec_dot_and_reference(ggml_cpu, qtype):
    cols = 1024
    raw = quantize(rng(1, qtype).standard_t(4, (24, cols)).astype(np.float32), qtype.name)
    x = activations_like_a_model(3, cols, 2, qtype)
    acts = qdot.quantize_activations(x, qtype)
    ours = qdot.qmatmul(raw, qtype, acts)
    theirs = ggml_vec_dots(ggml_cpu, raw, qtype, ggml_activations(ggml_cpu, x, ggml_activation_format(qtype)), cols)
    exact = qdot.qmatmul_reference(raw, qtype, x)
    scale = np.abs(exact).max()
    assert np.abs(ours - theirs).max() <= 2e-6 * scale, f"seed {SEED}"
    assert np.abs(ours - exact).max() <= 2e-6 * scale, f"seed {SEED}"


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q8_0, T.Q5_1])
def test_grouped_qmatmul_equals_reference(qtype):
    """Experts chosen in any order, some twice, groups of one slot (decode) and of many (prefill), and slots
    reading arbitrary activation rows."""
    n_experts, rows, cols = 6, 40, 512
    raw = np.stack([quantize(rng(3, e).standard_normal((rows, cols)).astype(np.float32), qtype.name)
                    for e in range(n_experts)])
    x = activations_like_a_model(9, cols, 4)
    experts, starts = np.array([4, 0, 5, 2]), np.array([0, 1, 8, 8, 11])
    src = rng(5).integers(0, 9, starts[-1])
    ours = qdot.grouped_qmatmul(raw, qtype, qdot.quantize_activations(x, qtype), experts, starts, src)
    for g, e in enumerate(experts):
        for s in range(starts[g], starts[g + 1]):
            exact = qdot.qmatmul_reference(raw[e], qtype, x[src[s]:src[s] + 1])[0]
            assert np.abs(ours[s] - exact).max() <= 2e-6 * np.abs(exact).max(), f"seed {SEED}"


def test_quantized_activations_refuse_ragged_rows():
    with pytest.raises(ValueError, match="256-value blocks"):
        qdot.quantize_activations(np.ones((1, 300), np.float32), T.Q4_K)
    raw = quantize(np.ones((4, 512), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="cannot take"):
        qdot.qmatmul(raw, T.Q4_K, qdot.quantize_activations(np.ones((1, 256), np.float32), T.Q4_K))


def _block_kernel(accumulate):
    """Every block against three token rows at once, and against the middle one alone (decode's 1-tuple), each
    into its own accumulator row: out[b, k] = what block b added for call k."""
    @njit
    def run(w, q, d, bs, out):
        size = w.shape[0] // out.shape[0]
        acc = np.zeros((4, simd.ACC_LANES), np.float32)
        for b in range(out.shape[0]):
            acc[:] = 0
            accumulate(w, b * size, q, d, bs, (0, 1, 2), b, acc)
            accumulate(w, b * size, q, d, bs, (1,), b, acc[3:])
            for k in range(4):
                out[b, k] = acc[k].astype(np.float64).sum()
    return run


@pytest.mark.parametrize("lowering", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("kind", sorted(qdot.BLOCKS))
def test_block_accumulate_lowerings_equal_numpy(kind, lowering):
    """Random bytes (every bit pattern of scales and values; float16 scales drawn apart, as any byte pair can be
    NaN), not just what a quantizer writes, against the float64 meaning of the block product."""
    features = simd.llvm.get_host_cpu_features().flatten()
    if lowering != "generic" and f"+{lowering}{'bw' if lowering == 'avx512' else ''}" not in features:
        pytest.skip(f"this CPU has no {lowering}")  # the other lowerings still run here
    qt = next(t for t, k in qdot.KINDS.items() if k == kind)
    block, size, n = qdot.BLOCKS[kind], qdot.BLOCK_BYTES_K[kind], 6
    run = _block_kernel(simd.make_block_accumulate(block, lowering))
    w = rng(6, kind).integers(0, 256, (n, size)).astype(np.uint8)
    for at in (block.d_at, block.m_at):
        if at is not None:
            w[:, at:at + 2] = rng(10, kind, at).uniform(-2, 2, (n, 1)).astype(np.float16).view(np.uint8)
    q = rng(7, kind).integers(-128, 128, (3, 256 * n)).astype(np.int8)  # -128 too: ggml's Q8_K can hold it
    d = rng(11, kind).uniform(0.01, 1, (3, n)).astype(np.float32)
    bs = rng(8, kind).integers(-2048, 2048, (3, 16 * n)).astype(np.int32)
    out = np.zeros((n, 4))
    run(w.reshape(-1), q, d, bs, out)
    for b in range(n):
        for k, t in enumerate([0, 1, 2, 1]):
            expected = simd.block_reference(block, w[b], q[t, 256 * b:256 * (b + 1)], float(d[t, b]),
                                            bs[t, 16 * b:16 * (b + 1)])
            scale = abs(float(d[t, b])) * 4 * 256 * 64 * 128  # float32 rounding of the integer sums
            assert abs(out[b, k] - expected) <= 1e-6 * scale, (qt.name, b, k)


def test_f16_loads():
    @njit
    def read(w, out):
        for i in range(out.shape[0]):
            out[i] = simd.f16_at(w, 2 * i + 1)  # unaligned on purpose
    halves = np.concatenate([rng(9).standard_normal(200).astype(np.float16),
                             np.array([0, -0.0, 6e-8, -6e-8, 65504, np.inf, -np.inf], np.float16)])
    w = np.zeros(2 * len(halves) + 4, np.uint8)
    w[1:1 + 2 * len(halves)] = halves.view(np.uint8)
    out = np.zeros(len(halves), np.float32)
    read(w, out)
    assert np.array_equal(out, halves.astype(np.float32))
