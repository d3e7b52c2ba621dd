"""Integer dot products on 8-bit data, written as LLVM vector IR inside numba (`numba.extending.intrinsic`).

    block_dot = make_block_dot(groups, scales)   # groups: 8 Fields, one per 32 values of a 256-value block
    block_dot(w, o, q, starts, at)[k] = sum_g sum_{i<32} value_g(i) * q[starts[k] + at + 32 g + i] * scale[2 g + i // 16]
        value_g(i) = ((w[o + g.low + i] >> g.shift) & g.mask) | (((w[o + g.high + i] >> g.hshift) & g.hmask) << g.hshl)
        scale: the block's 16 (or 8, one per 32 values) integer scales, as `scales` (a Scales) says
    bsum_dot = make_bsum_dot(scales);  bsum_dot(w, o, bs, starts, at)[k] = sum_{j<16} scale_j * bs[starts[k] + at + j]
    dot32_signed(w, wo, q, starts, at)[k] = sum_{i<32} int8(w[wo + i]) * q[starts[k] + at + i]
    f16_at(w, o) = float32 of the binary16 at bytes w[o:o+2] (any offset)

w: uint8 weight bytes, q: int8 quantized activations, bs: int32 activation sums; offsets count elements of the
flattened C-contiguous arrays, and the caller keeps them in bounds (there is no check). `starts` is a tuple of
activation rows (one per token; a 1-tuple for decode) and the results a tuple of int32 as long: one weight block
is loaded and unpacked once for all the tokens, which is what makes prefill cheaper per token than decode. Q4_K (nibbles), Q5_K
(nibble + 1 bit), Q6_K (nibble + 2 bits), Q2_K (2 bits) and Q3_K (2 bits + 1 bit) all fit `Field`.

Why IR and not numba loops: a 32-value integer reduction written as a loop stays scalar (LLVM's vectoriser wants
64 values per step), which made the int8 scheme 10x slower than float32 in plain numba. Here each group is one
<32 x i8> load and the whole block is summed in an <8 x i32> accumulator with a single horizontal add at the end.
On x86 with AVX2 the multiply-adds are VPMADDUBSW (u8 x s8 -> adjacent pairs summed to i16) and VPMADDWD (i16 x
scale -> pairs summed to i32), llama.cpp's own sequence; elsewhere the same arithmetic is written in generic IR
(even/odd lanes widened, multiplied and added), which every LLVM target lowers. The two agree exactly because no
i16 sum can saturate: weight values are at most 6 bits (63 * 128 * 2 < 32767). On AVX-512BW hosts two groups go
through one 512-bit instruction. `block_dot_reference` / `scales_reference` are the numpy meaning; tests hold every
lowering to them.
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


def _reduce_add(builder, vector):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector.type.element, [vector.type]),
                                        f"llvm.vector.reduce.add.v{vector.type.count}i{vector.type.element.width}")
    return builder.call(fn, [vector])


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


def _scale_vector(context, builder, sig, args, scales: Scales):
    """The block's scales as <16 x i16>, one lane per 16 values (8-scale layouts repeat each scale twice)."""
    w_, o_ = args[:2]
    if scales.packed:
        words = [_scalar_at(context, builder, sig.args[0], w_, _const_offset(builder, o_, scales.packed_at + 4 * k),
                            _I32) for k in range(3)]
        unpacked = builder.bitcast(_unpack_6bit(builder, words, scales.packed), _vec(_I8, 16))
        raw = _lanes(builder, unpacked, list(range(scales.offset, scales.offset + scales.count)))
    else:
        raw = _load(context, builder, sig.args[0], w_, _const_offset(builder, o_, scales.offset),
                    _vec(_I8, scales.count))
    if scales.shift or scales.mask != 0xFF:
        raw = _field(builder, raw, scales.shift, scales.mask)
    wide = (builder.sext if scales.signed else builder.zext)(raw, _vec(_I16, scales.count))
    if scales.bias:
        wide = builder.sub(wide, ir.Constant(wide.type, [scales.bias] * scales.count))
    if scales.count == 8:
        wide = _lanes(builder, wide, [j // 2 for j in range(16)])
    return wide


def _token_offsets(builder, starts, starts_type, at) -> list:
    """starts[k] + at for each token k of the UniTuple `starts` (both intp, see _per_token_signature)."""
    return [builder.add(builder.extract_value(starts, k), at) for k in range(starts_type.count)]


def _per_token_signature(w, o, acts, starts, at):
    """int32 per token, or None (not typed) unless `starts` is a UniTuple of integers and `at` an integer; both
    are taken as intp (numba casts the arguments)."""
    if not (isinstance(starts, types.UniTuple) and isinstance(starts.dtype, types.Integer)
            and isinstance(at, types.Integer)):
        return None
    return types.UniTuple(types.int32, starts.count)(w, o, acts, types.UniTuple(types.intp, starts.count),
                                                     types.intp)


def make_block_dot(groups: tuple[Field, ...], scales: Scales, lowering: str | None = None):
    """block_dot(w, o, q, starts, at): one weight block against the activation block of each token (see the module
    docstring), weights and scales unpacked once for all of them. lowering: None picks the host's best (see
    _lowering); "avx512", "avx2" or "generic" force one (tests)."""
    lowering = lowering or _lowering()
    assert len(groups) == 8

    @intrinsic
    def block_dot(typingctx, w, o, q, starts, at):
        signature = _per_token_signature(w, o, q, starts, at)

        def codegen(context, builder, sig, args):
            w_, o_, q_ = args[:3]
            w_type, q_type = sig.args[0], sig.args[2]
            token_offsets = _token_offsets(builder, args[3], sig.args[3], args[4])
            scale_lanes = _scale_vector(context, builder, sig, args, scales)

            def values(g: int):
                f = groups[g]
                raw = _load(context, builder, w_type, w_, _const_offset(builder, o_, f.low), _vec(_I8, 32))
                v = _field(builder, raw, f.shift, f.mask)
                if f.hmask:
                    high = _load(context, builder, w_type, w_, _const_offset(builder, o_, f.high), _vec(_I8, 32))
                    high = _field(builder, high, f.hshift, f.hmask)
                    v = builder.or_(v, builder.shl(high, ir.Constant(_vec(_I8, 32), [f.hshl] * 32)))
                return v

            def scale_of(first: int, n: int):  # i16 lanes for groups first..first+n-1: 8 per 16 values
                return _lanes(builder, scale_lanes, [j for g in range(first, first + n) for j in
                                                     [2 * g] * 8 + [2 * g + 1] * 8])

            step = 2 if lowering == "avx512" else 1  # groups per multiply-add
            accs = [ir.Constant(_vec(_I32, 8 * step), [0] * 8 * step)] * len(token_offsets)
            for g in range(0, 8, step):
                v = values(g) if step == 1 else builder.shuffle_vector(
                    values(g), values(g + 1), ir.Constant(_vec(_I32, 64), list(range(64))))
                scale = scale_of(g, step)
                for i, qo_ in enumerate(token_offsets):
                    acts = _load(context, builder, q_type, q_, _const_offset(builder, qo_, 32 * g),
                                 _vec(_I8, 32 * step))
                    accs[i] = builder.add(accs[i], _madd_pairs(builder, lowering, v, acts, scale))
            return context.make_tuple(builder, sig.return_type, [_reduce_add(builder, a) for a in accs])

        return signature, codegen

    return block_dot


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


def make_bsum_dot(scales: Scales):
    """bsum_dot(w, o, bs, starts, at)[k] = sum_{j<16} scale_j * bs[starts[k] + at + j]: a block's mins (or value
    offsets) against each token's activation sums per 16 values (Q8_K bsums, int32), scales unpacked once."""

    @intrinsic
    def bsum_dot(typingctx, w, o, bs, starts, at):
        signature = _per_token_signature(w, o, bs, starts, at)

        def codegen(context, builder, sig, args):
            lanes = builder.sext(_scale_vector(context, builder, sig, args, scales), _vec(_I32, 16))
            sums = []
            for bo in _token_offsets(builder, args[3], sig.args[3], args[4]):
                activation_sums = _load(context, builder, sig.args[2], args[2], bo, _vec(_I32, 16))
                sums.append(_reduce_add(builder, builder.mul(lanes, activation_sums)))
            return context.make_tuple(builder, sig.return_type, sums)

        return signature, codegen

    return bsum_dot


def _scalar_at(context, builder, array_type, array, offset, scalar_type):
    data = context.make_array(array_type)(context, builder, value=array).data
    return builder.load(builder.bitcast(builder.gep(data, [offset]), scalar_type.as_pointer()), align=1)


@intrinsic
def f16_at(typingctx, w, o):
    """The little-endian binary16 at bytes w[o:o+2] as float32 (one VCVTPH2PS where the CPU has F16C)."""
    def codegen(context, builder, sig, args):
        half = _scalar_at(context, builder, sig.args[0], args[0], args[1], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(w, o), codegen


@intrinsic
def dot32_signed(typingctx, w, wo, q, starts, at):
    """32 int8 weights against 32 int8 activations of each token (Q8_0 x Q8_0)."""
    signature = _per_token_signature(w, wo, q, starts, at)

    def codegen(context, builder, sig, args):
        x = builder.sext(_load(context, builder, sig.args[0], args[0], args[1], _vec(_I8, 32)), _vec(_I32, 32))
        sums = []
        for qo in _token_offsets(builder, args[3], sig.args[3], args[4]):
            y = _load(context, builder, sig.args[2], args[2], qo, _vec(_I8, 32))
            sums.append(_reduce_add(builder, builder.mul(x, builder.sext(y, _vec(_I32, 32)))))
        return context.make_tuple(builder, sig.return_type, sums)

    return signature, codegen


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
    """numpy meaning of a block_dot: one block's bytes and its 256 activations."""
    w, q = block.astype(np.int64), q.astype(np.int64)
    sc = scales_reference(scales, block)
    total = 0
    for g, f in enumerate(groups):
        values = (w[f.low:f.low + 32] >> f.shift) & f.mask
        values |= ((w[f.high:f.high + 32] >> f.hshift) & f.hmask) << f.hshl
        total += int((values * q[32 * g:32 * g + 32] * np.repeat(sc[2 * g:2 * g + 2], 16)).sum())
    return total
