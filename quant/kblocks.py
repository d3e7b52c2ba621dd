"""One 256-value super-block (32 for Q8_0 and the fallback types) of each GGML quantized type, ported loop for
loop from ggml-quants.c: the reference quantizers (`quantize_row_*_ref`) and, with `use_qw`, the importance-weighted
ones (`quantize_row_*_impl`) that llama.cpp uses when an imatrix is given. Layouts: reference/kquants.md section 2.

Each function quantizes x[0:256] (float32) into y (uint8, the block's bytes) and uses qw[0:256] (float32 imatrix
weights) when use_qw is set. fs (4, 256) float32 and js (4, 256) int32 are scratch rows allocated once per row by
the caller: a few small allocations per block would otherwise cost a fifth of the time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from quant.ksearch import (GROUP_MAX_EPS, ONE, ZERO, F, fp16_round, make_q3_quants, make_qkx_quants,
                           make_qp_quants, make_qx_quants, nearest_int, signed_absmax, store_fp16)

QK_K = 256
F15, F63, F32_, F128, F256 = F(15.0), F(63.0), F(32.0), F(128.0), F(256.0)
TWO = F(2.0)


@njit(cache=True, error_model="numpy")
def _u(y, k):
    """Byte k as int64: numba would otherwise mix uint8 and int64 arithmetic into float64."""
    return np.int64(y[k])


@njit(cache=True, error_model="numpy")
def _or(y, k, bits):
    """y[k] |= bits, truncated to a byte as C's uint8_t store does."""
    y[k] = (np.int64(y[k]) | bits) & 0xFF


@njit(cache=True, error_model="numpy")
def _sigma2(x, factor):
    """factor * (sum of x*x over the block) / 256, summed sequentially in float32."""
    s = ZERO
    for i in range(QK_K):
        s += x[i] * x[i]
    return factor * s / F256


@njit(cache=True, error_model="numpy")
def _importance(x, qw, sigma2, out):
    """out[i] = qw[i] * sqrt(sigma2 + x[i]^2) and their sequential sum."""
    total = ZERO
    for i in range(out.shape[0]):
        out[i] = qw[i] * F(math.sqrt(sigma2 + x[i] * x[i]))
    for i in range(out.shape[0]):
        total += out[i]
    return total


@njit(cache=True, error_model="numpy")
def _pack_2bit(L, qs):
    """qs[32h + r%32] holds element 128h + r in bits 2*(r//32): four 32-element runs per byte."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            qs[j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)) & 0xFF


# Q2_K (84 bytes):  scales[16] (lo nibble scale, hi nibble min, per 16 values) | qs[64] 2-bit | d fp16 | dmin fp16
@njit(cache=True, error_model="numpy")
def q2_k_block(x, y, qw, use_qw, fs, js):
    L, Laux, Ls, Lm = js[0], js[1], js[2], js[3]
    w, scales, mins, sw = fs[0][:16], fs[1], fs[2], fs[3]
    sc = y[0:16]
    if use_qw:
        sigma2 = _sigma2(x, ONE)
        for j in range(16):
            sw[j] = _importance(x[16 * j:16 * j + 16], qw[16 * j:16 * j + 16], sigma2, w)
            scales[j], mins[j] = make_qkx_quants(16, 3, x[16 * j:], w, L[16 * j:], Laux, F(-0.9), F(0.05), 36,
                                                 False, True)
        d = make_qp_quants(16, 15, scales, Ls, sw)
        dmin = make_qp_quants(16, 15, mins, Lm, sw)
        for j in range(16):
            sc[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
    else:
        max_scale = ZERO
        max_min = ZERO
        for j in range(16):
            for l in range(16):
                w[l] = abs(x[16 * j + l])
            scales[j], mins[j] = make_qkx_quants(16, 3, x[16 * j:], w, L[16 * j:], Laux, F(-0.5), F(0.1), 15,
                                                 True, False)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        d = ZERO
        dmin = ZERO
        for j in range(16):
            sc[j] = 0
        if max_scale > ZERO:
            iscale = F15 / max_scale
            for j in range(16):
                sc[j] = nearest_int(iscale * scales[j]) & 0xFF
            d = max_scale / F15
        if max_min > ZERO:
            iscale = F15 / max_min
            for j in range(16):
                _or(sc, j, nearest_int(iscale * mins[j]) << 4)
            dmin = max_min / F15
    store_fp16(y, 80, d)
    store_fp16(y, 82, dmin)
    d16, dmin16 = fp16_round(d), fp16_round(dmin)
    for j in range(16):
        dd = d16 * F(_u(sc, j) & 0xF)
        if dd == ZERO:
            continue
        dm = dmin16 * F(_u(sc, j) >> 4)
        for ii in range(16):
            L[16 * j + ii] = max(0, min(3, nearest_int((x[16 * j + ii] + dm) / dd)))
    _pack_2bit(L, y[16:80])


@njit(cache=True, error_model="numpy")
def _q3_scale(y, j):
    """The signed 6-bit scale j of a Q3_K block (scales at y[96:108])."""
    s = _u(y, 96 + j) & 0xF if j < 8 else _u(y, 96 + j - 8) >> 4
    return (s | ((_u(y, 96 + 8 + j % 4) >> (2 * (j // 4))) & 3) << 4) - 32


# Q3_K (110 bytes):  hmask[32] (3rd bit) | qs[64] low 2 bits | scales[12] (16 x 6-bit) | d fp16
@njit(cache=True, error_model="numpy")
def q3_k_block(x, y, qw, use_qw, fs, js):
    L, Ls = js[0], js[2]
    scales, w, sw = fs[1], fs[0][:16], fs[3]
    for k in range(96, 108):
        y[k] = 0
    if use_qw:
        sigma2 = _sigma2(x, TWO)
        for j in range(16):
            sw[j] = _importance(x[16 * j:16 * j + 16], qw[16 * j:16 * j + 16], sigma2, w)
            scales[j] = make_qx_quants(16, 4, x[16 * j:], L[16 * j:], w, True)
        d = make_qx_quants(16, 32, scales, Ls, sw, True)
    else:
        max_scale = ZERO
        amax = ZERO
        for j in range(16):
            scales[j] = make_q3_quants(16, 4, x[16 * j:], L[16 * j:])
            if abs(scales[j]) > amax:
                amax = abs(scales[j])
                max_scale = scales[j]
        d = ZERO
        if max_scale != ZERO:
            iscale = F(-32.0) / max_scale
            for j in range(16):
                li = nearest_int(iscale * scales[j])
                li = ((li + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
                Ls[j] = max(-32, min(31, li)) + 32
            d = ONE / iscale
    if use_qw or d != ZERO:
        for j in range(16):
            li = Ls[j]
            if j < 8:
                y[96 + j] = li & 0xF
            else:
                _or(y, 96 + j - 8, (li & 0xF) << 4)
            _or(y, 96 + 8 + j % 4, (li >> 4) << (2 * (j // 4)))
    store_fp16(y, 108, d)
    d16 = fp16_round(d)
    for j in range(16):
        dd = d16 * F(_q3_scale(y, j))
        if dd == ZERO:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-4, min(3, nearest_int(x[16 * j + ii] / dd))) + 4
    for k in range(32):
        y[k] = 0
    m, hm = 0, 1
    for j in range(QK_K):
        if L[j] > 3:
            _or(y, m, hm)
            L[j] -= 4
        m += 1
        if m == 32:
            m, hm = 0, hm << 1
    _pack_2bit(L, y[32:96])


@njit(cache=True, error_model="numpy")
def _pack_scales_k4(y, Ls, Lm):
    """Q4_K/Q5_K scales[12] at y[4:16]: 8 six-bit scales and 8 six-bit mins."""
    s = y[4:16]
    for j in range(8):
        ls, lm = Ls[j], Lm[j]
        if j < 4:
            s[j] = ls & 0xFF
            s[j + 4] = lm & 0xFF
        else:
            s[j + 4] = ((ls & 0xF) | ((lm & 0xF) << 4)) & 0xFF
            _or(s, j - 4, (ls >> 4) << 6)
            _or(s, j, (lm >> 4) << 6)


@njit(cache=True, error_model="numpy")
def scale_min_k4(y, j):
    """get_scale_min_k4 on the scales at y[4:16]."""
    if j < 4:
        return _u(y, 4 + j) & 63, _u(y, 8 + j) & 63
    return (_u(y, 8 + j) & 0xF) | ((_u(y, j) >> 6) << 4), (_u(y, 8 + j) >> 4) | ((_u(y, 4 + j) >> 6) << 4)


@njit(cache=True, error_model="numpy")
def _k4_common(x, y, qw, use_qw, nmax, rmin, rdelta, nstep, clamp_impl_scales, fs, js):
    """Shared by Q4_K (nmax 15) and Q5_K (nmax 31): sub-block fits, scales, d/dmin, the final codes in js[0]."""
    L, Laux, Ls, Lm = js[0], js[1], js[2], js[3]
    w, scales, mins, sw = fs[0][:32], fs[1], fs[2], fs[3]
    if use_qw:
        sigma2 = _sigma2(x, TWO)
        for j in range(8):
            sw[j] = _importance(x[32 * j:32 * j + 32], qw[32 * j:32 * j + 32], sigma2, w)
            scales[j], mins[j] = make_qkx_quants(32, nmax, x[32 * j:], w, L[32 * j:], Laux, F(-0.9), F(0.05), 36,
                                                 False, True)
        d = make_qp_quants(8, 63, scales, Ls, sw)
        dmin = make_qp_quants(8, 63, mins, Lm, sw)
        if clamp_impl_scales:
            for j in range(8):
                Ls[j] = min(63, Ls[j])
                Lm[j] = min(63, Lm[j])
    else:
        max_scale = ZERO
        max_min = ZERO
        for j in range(8):
            sum_x2 = ZERO
            for l in range(32):
                sum_x2 += x[32 * j + l] * x[32 * j + l]
            av_x = F(math.sqrt(sum_x2 / F32_))
            for l in range(32):
                w[l] = av_x + abs(x[32 * j + l])
            scales[j], mins[j] = make_qkx_quants(32, nmax, x[32 * j:], w, L[32 * j:], Laux, rmin, rdelta, nstep,
                                                 False, False)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        inv_scale = F63 / max_scale if max_scale > ZERO else ZERO
        inv_min = F63 / max_min if max_min > ZERO else ZERO
        for j in range(8):
            Ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # uint8 cast before the clamp
            Lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        d = max_scale / F63
        dmin = max_min / F63
    _pack_scales_k4(y, Ls, Lm)
    store_fp16(y, 0, d)
    store_fp16(y, 2, dmin)
    d16, dmin16 = fp16_round(d), fp16_round(dmin)
    for j in range(8):
        sc, m = scale_min_k4(y, j)
        dd = d16 * F(sc)
        if dd == ZERO:
            continue
        dm = dmin16 * F(m)
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, nearest_int((x[32 * j + ii] + dm) / dd)))


# Q4_K (144 bytes):  d fp16 | dmin fp16 | scales[12] | qs[128]: byte 32c + r holds values 64c + r (lo) and +32 (hi)
@njit(cache=True, error_model="numpy")
def q4_k_block(x, y, qw, use_qw, fs, js):
    _k4_common(x, y, qw, use_qw, 15, F(-1.0), F(0.1), 20, False, fs, js)
    L = js[0]
    for c in range(4):
        for l in range(32):
            y[16 + 32 * c + l] = (L[64 * c + l] | (L[64 * c + l + 32] << 4)) & 0xFF


# Q5_K (176 bytes):  d | dmin | scales[12] | qh[32] (5th bit of value e in bit e//32 of qh[e%32]) | qs[128] as Q4_K
@njit(cache=True, error_model="numpy")
def q5_k_block(x, y, qw, use_qw, fs, js):
    _k4_common(x, y, qw, use_qw, 31, F(-0.5), F(0.1), 15, True, fs, js)
    L = js[0]
    for k in range(16, 48):
        y[k] = 0
    m1, m2 = 1, 2
    for c in range(4):
        for j in range(32):
            l1, l2 = L[64 * c + j], L[64 * c + j + 32]
            if l1 > 15:
                l1 -= 16
                _or(y, 16 + j, m1)
            if l2 > 15:
                l2 -= 16
                _or(y, 16 + j, m2)
            y[48 + 32 * c + j] = (l1 | (l2 << 4)) & 0xFF
        m1, m2 = m1 << 2, m2 << 2


# Q6_K (210 bytes):  ql[128] low 4 bits | qh[64] high 2 bits | scales[16] int8 | d fp16
@njit(cache=True, error_model="numpy")
def q6_k_block(x, y, qw, use_qw, fs, js):
    L, scales = js[0], fs[1]
    max_scale = ZERO
    max_abs_scale = ZERO
    for ib in range(16):
        scales[ib] = make_qx_quants(16, 32, x[16 * ib:], L[16 * ib:], qw[16 * ib:], use_qw)
        if abs(scales[ib]) > max_abs_scale:
            max_abs_scale = abs(scales[ib])
            max_scale = scales[ib]
    if max_abs_scale < GROUP_MAX_EPS:
        for k in range(210):
            y[k] = 0
        return
    iscale = F(-128.0) / max_scale
    d = ONE / iscale
    store_fp16(y, 208, d)
    for ib in range(16):
        y[192 + ib] = min(127, nearest_int(iscale * scales[ib])) & 0xFF
    d16 = fp16_round(d)
    for j in range(16):
        s = _u(y, 192 + j)
        dd = d16 * F(s - 256 if s > 127 else s)
        if dd == ZERO:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-32, min(31, nearest_int(x[16 * j + ii] / dd))) + 32
    for h in range(2):
        base, ql, qh = 128 * h, 64 * h, 128 + 32 * h
        for l in range(32):
            q1, q2 = L[base + l] & 0xF, L[base + l + 32] & 0xF
            q3, q4 = L[base + l + 64] & 0xF, L[base + l + 96] & 0xF
            y[ql + l] = q1 | (q3 << 4)
            y[ql + l + 32] = q2 | (q4 << 4)
            y[qh + l] = ((L[base + l] >> 4) | ((L[base + l + 32] >> 4) << 2) | ((L[base + l + 64] >> 4) << 4)
                         | ((L[base + l + 96] >> 4) << 6)) & 0xFF


# Q8_0 (34 bytes per 32 values):  d fp16 | qs[32] int8. Rounds half away from zero (C roundf); imatrix unused.
@njit(cache=True, error_model="numpy")
def q8_0_block(x, y, qw, use_qw, fs, js):
    amax = ZERO
    for j in range(32):
        amax = max(amax, abs(x[j]))
    d = amax / F(127.0)
    inv = ONE / d if d != ZERO else ZERO
    store_fp16(y, 0, d)
    for j in range(32):
        v = np.float64(x[j] * inv)  # the float32 product, rounded in float64 so that +0.5 is exact
        q = math.floor(abs(v) + 0.5)
        y[2 + j] = np.int64(-q if v < 0 else q) & 0xFF


@njit(cache=True, error_model="numpy")
def _weighted_32(x, qw, sigma2, fs):
    """Importance weights of the fallback types: qw * sqrt(sigma2 + x^2), sigma2 taken over the whole row."""
    w = fs[0][:32]
    _importance(x, qw, sigma2, w)
    return w


# Q4_0 (18 bytes per 32):  d fp16 | qs[16]: value j in the low nibble of qs[j], value j+16 in the high nibble
@njit(cache=True, error_model="numpy")
def q4_0_block(x, y, qw, use_qw, row_sigma2, fs, js):
    if use_qw:
        L = js[0]
        store_fp16(y, 0, make_qx_quants(32, 8, x, L, _weighted_32(x, qw, row_sigma2, fs), True))
        for j in range(16):
            y[2 + j] = (L[j] | (L[j + 16] << 4)) & 0xFF
        return
    d = signed_absmax(x, 32)[1] / F(-8.0)
    inv = ONE / d if d != ZERO else ZERO
    store_fp16(y, 0, d)
    for j in range(16):
        xi0 = min(15, np.int64(x[j] * inv + F(8.5)))  # C (int8_t) cast truncates toward zero
        xi1 = min(15, np.int64(x[j + 16] * inv + F(8.5)))
        y[2 + j] = (xi0 | (xi1 << 4)) & 0xFF


@njit(cache=True, error_model="numpy")
def _pack_q5(y, qs_at, xi0, xi1, j, qh):
    y[qs_at + j] = ((xi0 & 0xF) | ((xi1 & 0xF) << 4)) & 0xFF
    return qh | (((xi0 & 0x10) >> 4) << j) | (((xi1 & 0x10) >> 4) << (j + 16))


@njit(cache=True, error_model="numpy")
def _store_u32(y, pos, v):
    for k in range(4):
        y[pos + k] = (v >> (8 * k)) & 0xFF


@njit(cache=True, error_model="numpy")
def _pack_q5_codes(y, qs_at, qh_at, L):
    qh = 0
    for j in range(16):
        qh = _pack_q5(y, qs_at, np.int64(L[j]), np.int64(L[j + 16]), j, qh)
    _store_u32(y, qh_at, qh)


# Q5_0 (22 bytes per 32):  d fp16 | qh u32 (5th bits: bit j for value j) | qs[16] as Q4_0
@njit(cache=True, error_model="numpy")
def q5_0_block(x, y, qw, use_qw, row_sigma2, fs, js):
    if use_qw:
        L = js[0]
        store_fp16(y, 0, make_qx_quants(32, 16, x, L, _weighted_32(x, qw, row_sigma2, fs), True))
        _pack_q5_codes(y, 6, 2, L)
        return
    d = signed_absmax(x, 32)[1] / F(-16.0)
    inv = ONE / d if d != ZERO else ZERO
    store_fp16(y, 0, d)
    qh = 0
    for j in range(16):
        xi0 = min(31, np.int64(x[j] * inv + F(16.5)))
        xi1 = min(31, np.int64(x[j + 16] * inv + F(16.5)))
        qh = _pack_q5(y, 6, xi0, xi1, j, qh)
    _store_u32(y, 2, qh)


# Q5_1 (24 bytes per 32):  d fp16 | m fp16 (the minimum) | qh u32 | qs[16]
@njit(cache=True, error_model="numpy")
def q5_1_block(x, y, qw, use_qw, row_sigma2, fs, js):
    if use_qw:
        L, Laux = js[0], js[1]
        d, the_min = make_qkx_quants(32, 31, x, _weighted_32(x, qw, row_sigma2, fs), L, Laux, F(-0.9), F(0.05), 36,
                                     False, True)
        store_fp16(y, 0, d)
        store_fp16(y, 2, -the_min)
        _pack_q5_codes(y, 8, 4, L)
        return
    vmin = x[0]
    vmax = x[0]
    for j in range(32):
        vmin = min(vmin, x[j])
        vmax = max(vmax, x[j])
    d = (vmax - vmin) / F(31.0)
    inv = ONE / d if d != ZERO else ZERO
    store_fp16(y, 0, d)
    store_fp16(y, 2, vmin)
    qh = 0
    for j in range(16):
        xi0 = np.int64((x[j] - vmin) * inv + F(0.5)) & 0xFF
        xi1 = np.int64((x[j + 16] - vmin) * inv + F(0.5)) & 0xFF
        qh = _pack_q5(y, 8, xi0, xi1, j, qh)
    _store_u32(y, 4, qh)
