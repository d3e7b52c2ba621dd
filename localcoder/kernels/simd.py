"""Block dot products on 8-bit data, written as LLVM vector IR inside numba (`numba.extending.intrinsic`).

    accumulate = make_block_accumulate(block)   # block: a Block (8 Fields of 32 values, scales, mins, d, dmin)
    accumulate(w, o, q, d, bs, tokens, b, acc)   # for each k: acc[k, :16] += lanes of
        d_block * d[t, b] * sum_g sum_{i<32} value_g(i) * q[t, 256 b + 32 g + i] * scale[2 g + i // 16]
        - dmin_block * d[t, b] * sum_{j<16} min_j * bs[t, 16 b + j]           (t = tokens[k])
        value_g(i) = ((w[o + g.low + i] >> g.shift) & g.mask) | (((w[o + g.high + i] >> g.hshift) & g.hmask) << g.hshl)
        scale, min: the block's 16 (or 8, one per 32 values) integer scales and mins, as its `Scales` say
    make_q32_accumulate(name)(w, o, q, d, s, tokens, b, acc, n)   # n blocks of Q8_0, Q4_0, Q5_0 or Q5_1
    f16_at(w, o) = float32 of the binary16 at bytes w[o:o+2] (any offset);  pow2(n) = 2.0**n as float32

w: uint8 weight bytes (o: the block's first byte; the caller keeps it in bounds, there is no check); q int8
[T, cols], d float32 [T, blocks] and bs int32 [T, cols / 16]: activations in ggml's Q8_K (or Q8_0) format;
acc float32 [>= len(tokens), 16]. Q4_K (nibbles), Q5_K (nibble + 1 bit), Q6_K (nibble + 2 bits), Q2_K (2 bits)
and Q3_K (2 bits + 1 bit) all fit `Field`.

Three choices carry the speed, each measured (docs/PERFORMANCE.md):
- IR and not numba loops: a 32-value integer reduction written as a loop stays scalar (LLVM's vectoriser wants
  64 values per step), which made the int8 scheme 10x slower than float32 in plain numba. Here each group is one
  <32 x i8> load; on x86 the multiply-adds are VPMADDUBSW (u8 x s8 -> adjacent pairs summed to i16) and VPMADDWD
  (i16 x scale -> pairs summed to i32), llama.cpp's own sequence, two groups per instruction on AVX-512BW;
  elsewhere the same arithmetic is written in generic IR (even/odd lanes widened, multiplied and added), which
  every LLVM target lowers. They agree exactly because no i16 sum can saturate: weight values are at most 6 bits
  (63 * 128 * 2 < 32767).
- Several tokens per call: each weight block and its scales are loaded and unpacked once for all of them (a
  1-tuple for decode), which is what makes prefill cheaper per token than decode.
- No horizontal add per block: the integer lanes are scaled in float32 lanes and added into `acc`, summed once
  per weight row by the caller (per-block reductions cost as much as the multiply-adds).
`block_reference` / `scales_reference` are the numpy meaning; tests hold every lowering to them.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _vec(element, lanes: int) -> ir.VectorType:
    return ir.VectorType(element, lanes)


class Field(NamedTuple):
    """Where the 32 values of one group live, relative to the block's first byte."""

    low: int  # offset of 32 bytes holding the low bits
    shift: int
    mask: int
    high: int = 0  # offset of 32 bytes holding the high bits (hmask = 0: none)
    hshift: int = 0
    hmask: int = 0
    hshl: int = 0


@cache
def _lowering() -> str:
    """How block_dot multiplies on this host: "avx512" (two groups per VPMADDUBSW/VPMADDWD on 512-bit registers,
    AVX-512BW), "avx2" (one group per 256-bit pair), or "generic" IR for LLVM to lower."""
    features = set(llvm.get_host_cpu_features().flatten().split(","))
    if "+avx512bw" in features:
        return "avx512"
    return "avx2" if "+avx2" in features else "generic"


def _load(context, builder, array_type, array, offset, vector_type):
    """One unaligned vector load of `array` from element `offset`."""
    data = context.make_array(array_type)(context, builder, value=array).data
    return builder.load(builder.bitcast(builder.gep(data, [offset]), vector_type.as_pointer()), align=1)


def _const_offset(builder, offset, extra: int):
    return builder.add(offset, ir.Constant(offset.type, extra)) if extra else offset


def _field(builder, raw, shift: int, mask: int):
    lanes = raw.type.count
    shifted = builder.lshr(raw, ir.Constant(_vec(_I8, lanes), [shift] * lanes)) if shift else raw
    return builder.and_(shifted, ir.Constant(_vec(_I8, lanes), [mask] * lanes))


def _lanes(builder, vector, picks):
    return builder.shuffle_vector(vector, ir.Constant(vector.type, None), ir.Constant(_vec(_I32, len(picks)), picks))


def _pairs_generic(builder, a, b, widen_a, widen_b, wide):
    """Adjacent lane pairs of a * b summed: lane i = a[2i] * b[2i] + a[2i+1] * b[2i+1], in `wide` integers."""
    n = a.type.count // 2
    even, odd = list(range(0, 2 * n, 2)), list(range(1, 2 * n, 2))
    products = [builder.mul(widen_a(_lanes(builder, a, picks), _vec(wide, n)),
                            widen_b(_lanes(builder, b, picks), _vec(wide, n))) for picks in (even, odd)]
    return builder.add(*products)


def _madd_x86(builder, name: str, result, a, b):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, [a.type, b.type]), name)
    return builder.call(fn, [a, b])


def _madd_pairs(builder, lowering: str, values, acts, scale):
    """values (u8) x acts (s8), adjacent pairs summed to i16, times the i16 scales, pairs summed to i32."""
    if lowering == "avx512":
        pairs = _madd_x86(builder, "llvm.x86.avx512.pmaddubs.w.512", _vec(_I16, 32), values, acts)
        return _madd_x86(builder, "llvm.x86.avx512.pmaddw.d.512", _vec(_I32, 16), pairs, scale)
    if lowering == "avx2":
        pairs = _madd_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_I16, 16), values, acts)
        return _madd_x86(builder, "llvm.x86.avx2.pmadd.wd", _vec(_I32, 8), pairs, scale)
    pairs = _pairs_generic(builder, values, acts, builder.zext, builder.sext, _I16)
    return _pairs_generic(builder, pairs, scale, builder.sext, builder.sext, _I32)


class Scales(NamedTuple):
    """Where a block's integer scales live: `count` bytes (16: one per 16 values, 8: one per 32) from byte `offset`
    of the block, read as ((byte >> shift) & mask) - bias, signed or not. packed="k4" / "q3": the bytes are first
    unpacked from the 12 bytes of 6-bit scales at the block's `packed_at` (Q4_K/Q5_K: 8 scales then 8 mins; Q3_K:
    16 scales, to be taken with bias 32), with ggml's mask arithmetic, in registers."""

    offset: int
    count: int = 16
    signed: bool = False
    shift: int = 0
    mask: int = 0xFF
    bias: int = 0
    packed: str | None = None
    packed_at: int = 0


_K1, _K2, _K3 = 0x3F3F3F3F, 0x0F0F0F0F, 0x03030303


def _unpack_6bit(builder, words, packed: str):
    """ggml's unpack of 12 bytes of 6-bit scales (three i32 words) into 16 bytes, as a <4 x i32>."""
    c = lambda v: ir.Constant(_I32, v)  # noqa: E731
    band, shr, shl, bor = builder.and_, builder.lshr, builder.shl, builder.or_
    u0, u1, u2 = words
    if packed == "k4":  # get_scale_min_k4: scales 0-7 then mins 0-7
        out = [band(u0, c(_K1)),
               bor(band(u2, c(_K2)), shl(band(shr(u0, c(6)), c(_K3)), c(4))),
               band(u1, c(_K1)),
               bor(band(shr(u2, c(4)), c(_K2)), shl(band(shr(u1, c(6)), c(_K3)), c(4)))]
    else:  # Q3_K: low nibbles from the first 8 bytes, high 2 bits from the last 4
        out = [bor(band(shr(u, c(nibble)), c(_K2)), shl(band(shr(u2, c(2 * k)), c(_K3)), c(4)))
               for k, (u, nibble) in enumerate(((u0, 0), (u1, 0), (u0, 4), (u1, 4)))]
    vector = ir.Constant(_vec(_I32, 4), None)
    for k, word in enumerate(out):
        vector = builder.insert_element(vector, word, c(k))
    return vector


def _scale_vector(context, builder, w_type, w_, o_, scales: Scales):
    """The block's scales as <16 x i16>, one lane per 16 values (8-scale layouts repeat each scale twice)."""
    if scales.packed:
        words = [_scalar_at(context, builder, w_type, w_, _const_offset(builder, o_, scales.packed_at + 4 * k),
                            _I32) for k in range(3)]
        unpacked = builder.bitcast(_unpack_6bit(builder, words, scales.packed), _vec(_I8, 16))
        raw = _lanes(builder, unpacked, list(range(scales.offset, scales.offset + scales.count)))
    else:
        raw = _load(context, builder, w_type, w_, _const_offset(builder, o_, scales.offset), _vec(_I8, scales.count))
    if scales.shift or scales.mask != 0xFF:
        raw = _field(builder, raw, scales.shift, scales.mask)
    wide = (builder.sext if scales.signed else builder.zext)(raw, _vec(_I16, scales.count))
    if scales.bias:
        wide = builder.sub(wide, ir.Constant(wide.type, [scales.bias] * scales.count))
    if scales.count == 8:
        wide = _lanes(builder, wide, [j // 2 for j in range(16)])
    return wide


class Block(NamedTuple):
    """A 256-value K-quant block: its 8 groups of 32 values, its integer scales and mins (or, for formats whose
    values carry an offset, the scales again), and its float16 super-scales: d at byte d_at; the mins' scale at
    byte m_at, or (m_at None) d times m_factor (the offset: Q6_K 32, Q3_K 4)."""

    groups: tuple[Field, ...]
    scales: Scales
    mins: Scales
    d_at: int
    m_at: int | None = None
    m_factor: int = 0


ACC_LANES = 16  # float32 lanes per token in the accumulators the block products add into


class _Matrix:
    """A 2-D C-contiguous array argument inside an intrinsic: loads and stores of vectors at (row, column)."""

    def __init__(self, context, builder, array_type, value):
        self.builder = builder
        array = context.make_array(array_type)(context, builder, value=value)
        self.data, self.width = array.data, cgutils.unpack_tuple(builder, array.shape)[1]

    def _pointer(self, row, col, element_type):
        offset = self.builder.add(self.builder.mul(row, self.width), col)
        return self.builder.bitcast(self.builder.gep(self.data, [offset]), element_type.as_pointer())

    def load(self, row, col, element_type):
        return self.builder.load(self._pointer(row, col, element_type), align=1)

    def store(self, value, row, col):
        self.builder.store(value, self._pointer(row, col, value.type), align=1)


def _matrix_type(array, dtype) -> bool:
    return isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C" and array.dtype == dtype


def _accumulate_signature(w, o, q, d, sums, sums_dtype, tokens, b, acc, count=None):
    """none(...), or None (not typed) unless the arguments are what the accumulate intrinsics read: tokens a
    UniTuple of integers (taken as intp, like o, b and count), q int8, d float32, sums of sums_dtype, acc
    float32, all 2-D C."""
    if not (isinstance(tokens, types.UniTuple) and isinstance(tokens.dtype, types.Integer)
            and _matrix_type(q, types.int8) and _matrix_type(d, types.float32)
            and _matrix_type(sums, sums_dtype) and _matrix_type(acc, types.float32)):
        return None
    args = [w, types.intp, q, d, sums, types.UniTuple(types.intp, tokens.count), types.intp, acc]
    return types.none(*(args + ([types.intp] if count is not None else [])))


def _splat(builder, scalar, lanes: int):
    vector = builder.insert_element(ir.Constant(_vec(scalar.type, lanes), None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vector, vector, ir.Constant(_vec(_I32, lanes), [0] * lanes))


def _f16(context, builder, w_type, w_, o_, at: int):
    return builder.fpext(_scalar_at(context, builder, w_type, w_, _const_offset(builder, o_, at), ir.HalfType()),
                         ir.FloatType())


def _scaled(builder, products, scale):
    """float32 lanes of products (<16 x i32>) times the float scalar scale."""
    return builder.fmul(builder.sitofp(products, _vec(ir.FloatType(), ACC_LANES)), _splat(builder, scale, ACC_LANES))


def _add_into(builder, acc, k: int, lanes):
    """acc[k, :16] += lanes (one read-modify-write per block and token: the chain through acc is the latency)."""
    row, zero = ir.Constant(ir.IntType(64), k), ir.Constant(ir.IntType(64), 0)
    acc.store(builder.fadd(acc.load(row, zero, lanes.type), lanes), row, zero)


def make_block_accumulate(block: Block, lowering: str | None = None):
    """accumulate(w, o, q, d, bs, tokens, b, acc): the weight block at bytes w[o:] against activation block b of
    each token (tokens[k]: a row of q [T, cols] int8, d [T, cols / 256] float32, bs [T, cols / 16] int32), added
    into acc[k, :16] (float32 lanes whose sum is the dot product; the caller zeroes acc and sums each row at the
    end of a weight row, so there is no horizontal add per block). The weights, scales and mins are unpacked
    once for all the tokens. lowering: None picks the host's best (see _lowering); "avx512", "avx2" or
    "generic" force one (tests)."""
    lowering = lowering or _lowering()
    assert len(block.groups) == 8

    @intrinsic
    def accumulate(typingctx, w, o, q, d, bs, tokens, b, acc):
        signature = _accumulate_signature(w, o, q, d, bs, types.int32, tokens, b, acc)

        def codegen(context, builder, sig, args):
            w_, o_, q_, d_, bs_, tokens_, b_, acc_ = args
            w_type = sig.args[0]
            qm, dm, bsm = (_Matrix(context, builder, sig.args[i], args[i]) for i in (2, 3, 4))
            accm = _Matrix(context, builder, sig.args[7], acc_)
            rows = [builder.extract_value(tokens_, k) for k in range(sig.args[5].count)]
            i64 = b_.type
            first_value = builder.mul(b_, ir.Constant(i64, 256))
            dots = _group_dots(context, builder, w_type, w_, o_, block, lowering, qm, rows, first_value)
            mins = builder.sext(_scale_vector(context, builder, w_type, w_, o_, block.mins), _vec(_I32, 16))
            first_sum = builder.mul(b_, ir.Constant(i64, 16))
            super_d = _f16(context, builder, w_type, w_, o_, block.d_at)
            super_m = _f16(context, builder, w_type, w_, o_, block.m_at) if block.m_at is not None else None
            for k, row in enumerate(rows):
                sums = builder.mul(mins, bsm.load(row, first_sum, _vec(_I32, 16)))
                act_scale = dm.load(row, b_, ir.FloatType())
                if super_m is None:  # values carry an offset: integer dot - offset * sums, one scale
                    total = builder.sub(dots[k], builder.mul(sums, ir.Constant(sums.type, [block.m_factor] * 16)))
                    lanes = _scaled(builder, total, builder.fmul(super_d, act_scale))
                else:
                    lanes = builder.fsub(_scaled(builder, dots[k], builder.fmul(super_d, act_scale)),
                                         _scaled(builder, sums, builder.fmul(super_m, act_scale)))
                _add_into(builder, accm, k, lanes)
            return context.get_dummy_value()

        return signature, codegen

    return accumulate


def _group_dots(context, builder, w_type, w_, o_, block: Block, lowering: str, qm: _Matrix, rows, first_value):
    """Per token, the block's integer products as <16 x i32> lanes (their sum is the block's integer dot)."""

    def values(g: int):
        f = block.groups[g]
        raw = _load(context, builder, w_type, w_, _const_offset(builder, o_, f.low), _vec(_I8, 32))
        v = _field(builder, raw, f.shift, f.mask)
        if f.hmask:
            high = _load(context, builder, w_type, w_, _const_offset(builder, o_, f.high), _vec(_I8, 32))
            high = _field(builder, high, f.hshift, f.hmask)
            v = builder.or_(v, builder.shl(high, ir.Constant(_vec(_I8, 32), [f.hshl] * 32)))
        return v

    scale_lanes = _scale_vector(context, builder, w_type, w_, o_, block.scales)

    def scale_of(first: int, n: int):  # i16 lanes for groups first..first+n-1: 8 per 16 values
        return _lanes(builder, scale_lanes, [j for g in range(first, first + n) for j in [2 * g] * 8 + [2 * g + 1] * 8])

    step = 2 if lowering == "avx512" else 1  # groups per multiply-add
    # 8-lane lowerings keep even and odd groups apart and join them at the end: 16 lanes either way
    accs = [[ir.Constant(_vec(_I32, 8 * step), [0] * 8 * step)] * (2 // step) for _ in rows]
    for g in range(0, 8, step):
        v = values(g) if step == 1 else builder.shuffle_vector(
            values(g), values(g + 1), ir.Constant(_vec(_I32, 64), list(range(64))))
        scale = scale_of(g, step)
        for k, row in enumerate(rows):
            acts = qm.load(row, _const_offset(builder, first_value, 32 * g), _vec(_I8, 32 * step))
            half = (g // step) % len(accs[k])
            accs[k][half] = builder.add(accs[k][half], _madd_pairs(builder, lowering, v, acts, scale))
    return [a[0] if step == 2 else builder.shuffle_vector(a[0], a[1], ir.Constant(_vec(_I32, 16), list(range(16))))
            for a in accs]


def _scalar_at(context, builder, array_type, array, offset, scalar_type):
    data = context.make_array(array_type)(context, builder, value=array).data
    return builder.load(builder.bitcast(builder.gep(data, [offset]), scalar_type.as_pointer()), align=1)


@intrinsic
def pow2(typingctx, n):
    """2.0**n as float32 for integer n in [-126, 127], from its bits ((n + 127) << 23): vectorises, unlike ldexp."""
    def codegen(context, builder, sig, args):
        biased = builder.add(builder.trunc(args[0], _I32) if args[0].type.width > 32 else args[0],
                             ir.Constant(_I32, 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(_I32, 23)), ir.FloatType())

    if not isinstance(n, types.Integer) or n.bitwidth < 32:
        return None
    return types.float32(n), codegen


@intrinsic
def f16_at(typingctx, w, o):
    """The little-endian binary16 at bytes w[o:o+2] as float32 (one VCVTPH2PS where the CPU has F16C)."""
    def codegen(context, builder, sig, args):
        return _f16(context, builder, sig.args[0], args[0], args[1], 0)

    return types.float32(w, o), codegen


# The 32-value formats: bytes per block and where the float16 d, the float16 m (Q5_1's offset), the 32 high bits
# (Q5_*) and the quants live. Values are nibbles (Q4_*, Q5_*: low nibbles are values 0-15, high ones 16-31) plus
# the high bit, minus a bias (signed formats), or int8 (Q8_0).
_Q32 = {"q8_0": dict(size=34, qs=2, int8=True), "q4_0": dict(size=18, qs=2, bias=8),
        "q5_0": dict(size=22, qh=2, qs=6, bias=16), "q5_1": dict(size=24, m=2, qh=4, qs=8)}


def _q32_values(context, builder, w_type, w_, ob, layout: dict):
    """The block's 32 weight values as <32 x i16> (signed; Q5_1's are 0..31 and its offset goes through m)."""
    qs = _const_offset(builder, ob, layout["qs"])
    if layout.get("int8"):  # q8_0
        return builder.sext(_load(context, builder, w_type, w_, qs, _vec(_I8, 32)), _vec(_I16, 32))
    packed = _load(context, builder, w_type, w_, qs, _vec(_I8, 16))
    nibbles = builder.shuffle_vector(_field(builder, packed, 0, 15), _field(builder, packed, 4, 15),
                                     ir.Constant(_vec(_I32, 32), list(range(32))))
    values = builder.zext(nibbles, _vec(_I16, 32))
    if "qh" in layout:
        qh = _scalar_at(context, builder, w_type, w_, _const_offset(builder, ob, layout["qh"]), _I32)
        bits = builder.lshr(_splat(builder, qh, 32), ir.Constant(_vec(_I32, 32), list(range(32))))
        high = builder.trunc(builder.and_(bits, ir.Constant(_vec(_I32, 32), [1] * 32)), _vec(_I16, 32))
        values = builder.or_(values, builder.shl(high, ir.Constant(_vec(_I16, 32), [4] * 32)))
    if layout.get("bias"):
        values = builder.sub(values, ir.Constant(_vec(_I16, 32), [layout["bias"]] * 32))
    return values


def make_q32_accumulate(name: str):
    """accumulate(w, o, q, d, s, tokens, b, acc, count): `count` consecutive blocks of the 32-value format `name`
    ("q8_0", "q4_0", "q5_0", "q5_1") from bytes w[o:] against activation blocks b.. of each token, added into
    acc[k, :16] like a Block's accumulate. Activations are ggml's Q8_0 (q, d) or, for q5_1, Q8_1: s [T, blocks]
    holds d * sum(q) per block (ggml's float16 `s`), which Q5_1's offset m multiplies; other formats ignore s.
    The loop over blocks runs inside, sums in registers: a read-modify-write of acc per 32-value block halved
    the speed (too little work to hide its latency)."""
    layout = _Q32[name]

    @intrinsic
    def accumulate(typingctx, w, o, q, d, s, tokens, b, acc, count):
        signature = _accumulate_signature(w, o, q, d, s, types.float32, tokens, b, acc, count)

        def codegen(context, builder, sig, args):
            w_, o_, q_, d_, s_, tokens_, b_, acc_, count_ = args
            w_type = sig.args[0]
            qm, dm, sm = (_Matrix(context, builder, sig.args[i], args[i]) for i in (2, 3, 4))
            accm = _Matrix(context, builder, sig.args[7], acc_)
            rows = [builder.extract_value(tokens_, k) for k in range(sig.args[5].count)]
            f32x16 = _vec(ir.FloatType(), ACC_LANES)
            sums = [cgutils.alloca_once_value(builder, ir.Constant(f32x16, [0.0] * ACC_LANES)) for _ in rows]

            def block_lanes(block, k_rows):  # per token, the float32 lanes of one block's product
                ob = builder.add(o_, builder.mul(block, ir.Constant(block.type, layout["size"])))
                weights = _q32_values(context, builder, w_type, w_, ob, layout)
                super_d = _f16(context, builder, w_type, w_, ob, 0)
                offset = _f16(context, builder, w_type, w_, ob, layout["m"]) if "m" in layout else None
                block = builder.add(b_, block)
                first = builder.mul(block, ir.Constant(block.type, 32))
                out = []
                for row in k_rows:
                    acts = builder.sext(qm.load(row, first, _vec(_I8, 32)), _vec(_I16, 32))
                    pairs = _pairs_generic(builder, weights, acts, builder.sext, builder.sext, _I32)  # VPMADDWD
                    lanes = _scaled(builder, pairs, builder.fmul(super_d, dm.load(row, block, ir.FloatType())))
                    if offset is not None:  # + m * s, in one lane (the lanes are summed at the end)
                        extra = builder.fmul(offset, sm.load(row, block, ir.FloatType()))
                        lanes = builder.fadd(lanes, builder.insert_element(ir.Constant(f32x16, [0.0] * ACC_LANES),
                                                                           extra, ir.Constant(_I32, 0)))
                    out.append(lanes)
                return out

            def run(first_block, unroll: int):  # `unroll` blocks, summed as a tree, then into the sums
                parts = [block_lanes(_const_offset(builder, first_block, u), rows) for u in range(unroll)]
                while len(parts) > 1:
                    parts = [[builder.fadd(a, b) for a, b in zip(parts[i], parts[i + 1])]
                             for i in range(0, len(parts), 2)]
                for k in range(len(rows)):
                    builder.store(builder.fadd(builder.load(sums[k]), parts[0][k]), sums[k])

            unroll = 8  # blocks per step: a sum chain of one add per 256 values, not per 32
            steps = builder.udiv(count_, ir.Constant(count_.type, unroll))
            with cgutils.for_range(builder, steps) as loop:
                run(builder.mul(loop.index, ir.Constant(count_.type, unroll)), unroll)
            done = builder.mul(steps, ir.Constant(count_.type, unroll))
            with cgutils.for_range(builder, builder.sub(count_, done)) as loop:
                run(builder.add(done, loop.index), 1)
            for k in range(len(rows)):
                _add_into(builder, accm, k, builder.load(sums[k]))
            return context.get_dummy_value()

        return signature, codegen

    return accumulate


def scales_reference(scales: Scales, block: np.ndarray) -> np.ndarray:
    """The 16 per-16-value scales a Scales describes, as int64, from one block's bytes; packed scales through
    ggml's per-index formulas (get_scale_min_k4, Q3_K's dequantize_row) rather than the mask arithmetic."""
    block = block.astype(np.int64)
    if scales.packed:
        b = block[scales.packed_at:scales.packed_at + 12]
        if scales.packed == "k4":
            sc = [b[j] & 63 if j < 4 else (b[j + 4] & 0xF) | ((b[j - 4] >> 6) << 4) for j in range(8)]
            mn = [b[j + 4] & 63 if j < 4 else (b[j + 4] >> 4) | ((b[j] >> 6) << 4) for j in range(8)]
            source = np.array(sc + mn)
        else:
            source = np.array([(b[j] & 0xF if j < 8 else b[j - 8] >> 4) | (((b[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)
                               for j in range(16)])
        raw = source[scales.offset:scales.offset + scales.count]
    else:
        raw = block[scales.offset:scales.offset + scales.count]
    values = (raw.astype(np.uint8).view(np.int8).astype(np.int64) if scales.signed
              else (raw >> scales.shift) & scales.mask) - scales.bias
    return np.repeat(values, 2) if scales.count == 8 else values


def block_dot_reference(groups: tuple[Field, ...], scales: Scales, block: np.ndarray, q: np.ndarray) -> int:
    """The integer part of a block product: one block's bytes against 256 int8 activations."""
    w, q = block.astype(np.int64), q.astype(np.int64)
    sc = scales_reference(scales, block)
    total = 0
    for g, f in enumerate(groups):
        values = (w[f.low:f.low + 32] >> f.shift) & f.mask
        values |= ((w[f.high:f.high + 32] >> f.hshift) & f.hmask) << f.hshl
        total += int((values * q[32 * g:32 * g + 32] * np.repeat(sc[2 * g:2 * g + 2], 16)).sum())
    return total


def block_reference(block: Block, data: np.ndarray, q: np.ndarray, d: float, bs: np.ndarray) -> float:
    """What accumulate adds for one token, in float64: the block's bytes against 256 activations q, their scale
    d and their sums per 16 values bs."""
    half = lambda at: float(data[at:at + 2].view(np.float16)[0])  # noqa: E731
    dot = block_dot_reference(block.groups, block.scales, data, q)
    sums = int((scales_reference(block.mins, data) * bs.astype(np.int64)).sum())
    dmin = half(block.m_at) if block.m_at is not None else half(block.d_at) * block.m_factor
    return d * (half(block.d_at) * dot - dmin * sums)
