"""Scalar primitives of ggml's quantizers, ported loop for loop from ggml-quants.c (llama.cpp in llama-cpp-python
0.3.36) so that numba produces the same bytes (reference/kquants.md sections 1 and 3).

The search helpers are inlined into the block kernels (inline="always"): called 16 times per block, their call
boundaries (array refcounting) cost Q6_K about 10% otherwise.

Float discipline: every value is float32 and every operation is evaluated in C's order. In numba, an int or a
Python float literal in an expression promotes it to float64, so ints are wrapped in F() and constants are float32
globals. Reductions are sequential loops. No fastmath (it would allow FMA contraction and re-association).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

import quant.jit  # noqa: F401  (cache keyed by source; before any @njit)

F = np.float32
MAGIC = F(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer (round half to even) in float32
GROUP_MAX_EPS = F(1e-15)
ZERO = F(0.0)
ONE = F(1.0)
TENTH = F(0.1)


@intrinsic
def _float32_bits(typingctx, value):
    """The int32 bit pattern of a float32 (C's memcpy from float to int)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(cache=True, error_model="numpy")
def nearest_int(fval):
    """ggml's nearest_int, bit for bit: float32 add of 1.5*2**23, then the low 23 bits minus 2**22 (round half to
    even inside +-2**22, and the same wrapped value outside, where release builds skip the assert)."""
    return np.int64((_float32_bits(fval + MAGIC) & 0x007FFFFF) - 0x00400000)


@njit(cache=True, error_model="numpy")
def fp32_to_fp16_bits(f):
    """IEEE binary16 bits of float32 f, rounding to nearest even (= ggml_compute_fp32_to_fp16, NaN -> 0x7E00)."""
    x = np.float64(f)
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    if x != x:
        return np.uint16(sign | 0x7E00)
    a = abs(x)
    if a >= 65520.0:
        return np.uint16(sign | 0x7C00)
    if a < 6.103515625e-05:  # binary16 subnormal (or zero): units of 2**-24
        return np.uint16(sign | np.int64(np.rint(a * 16777216.0)))
    m, e = math.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    mant = np.int64(np.rint((m * 2.0 - 1.0) * 1024.0))  # exact product, so rint is the one rounding
    exp = e - 1 + 15
    if mant == 1024:
        mant = 0
        exp += 1
    return np.uint16(sign | (exp << 10) | mant)


@njit(cache=True, error_model="numpy")
def fp16_bits_to_fp32(h):
    """float32 value of binary16 bits h (exact)."""
    h = np.int64(h)
    sign = -1.0 if h & 0x8000 else 1.0
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        return F(sign * mant * 2.0 ** -24)
    if exp == 31:
        return F(sign * math.inf) if mant == 0 else F(math.nan)
    return F(sign * (1.0 + mant / 1024.0) * 2.0 ** (exp - 15))


@njit(cache=True, error_model="numpy")
def fp16_round(f):
    """f rounded through binary16 and back, as ggml does when it re-reads a stored scale."""
    return fp16_bits_to_fp32(fp32_to_fp16_bits(f))


@njit(cache=True, error_model="numpy")
def store_fp16(out, pos, f):
    """Write f as little-endian binary16 at out[pos:pos+2]."""
    h = fp32_to_fp16_bits(f)
    out[pos] = np.uint8(h & 0xFF)
    out[pos + 1] = np.uint8(h >> 8)


@njit(cache=True, error_model="numpy", inline="always")
def make_qkx_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, qkx3):
    """Asymmetric fit x ~ scale*L + min, L in [0, nmax]: make_qkx2_quants (Q:799-878) or, with qkx3,
    make_qkx3_quants (Q:993-1074), whose only reachable difference is giving up when max <= min instead of
    max == min (they differ when every value is negative). Returns (scale, the_min), the_min = -min >= 0."""
    fmin = x[0]
    fmax = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < fmin:
            fmin = x[i]
        if x[i] > fmax:
            fmax = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if fmin > ZERO:
        fmin = ZERO
    if fmax == fmin or (qkx3 and fmax < fmin):
        for i in range(n):
            L[i] = 0
        return ZERO, -fmin
    iscale = F(nmax) / (fmax - fmin)
    scale = ONE / iscale
    best_error = ZERO
    for i in range(n):
        li = nearest_int(iscale * (x[i] - fmin))
        L[i] = max(0, min(nmax, li))
        diff = scale * F(L[i]) + fmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F(step) + F(nmax)) / (fmax - fmin)
        sum_l = ZERO
        sum_l2 = ZERO
        sum_xl = ZERO
        for i in range(n):
            li = max(0, min(nmax, nearest_int(iscale * (x[i] - fmin))))
            Laux[i] = li
            w = weights[i]
            fl = F(li)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > ZERO:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > ZERO:
                this_min = ZERO
                this_scale = sum_xl / sum_l2
            cur_error = ZERO
            for i in range(n):
                diff = this_scale * F(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                fmin = this_min
    return scale, -fmin


@njit(cache=True, error_model="numpy")
def signed_absmax(x, n):
    """(largest |x[i]|, the signed x[i] attaining it); the first one wins ties, as in ggml's strict `>` loops."""
    amax = ZERO
    vmax = ZERO
    for i in range(n):
        if abs(x[i]) > amax:
            amax = abs(x[i])
            vmax = x[i]
    return amax, vmax


@njit(cache=True, error_model="numpy", inline="always")
def make_qx_quants(n, nmax, x, L, qw, use_qw):
    """Symmetric fit with codes L in [0, 2*nmax-1] (Q:628-695, rmse_type 1); weights qw, else x*x."""
    amax, fmax = signed_absmax(x, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    iscale = F(-nmax) / fmax
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = li + nmax
        w = qw[i] if use_qw else x[i] * x[i]
        sumlx += w * x[i] * F(li)
        suml2 += w * F(li) * F(li)
    scale = sumlx / suml2 if suml2 != ZERO else ZERO
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F(nmax) + TENTH * F(step)) / fmax
        sumlx = ZERO
        suml2 = ZERO
        for i in range(n):
            li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = qw[i] if use_qw else x[i] * x[i]
            sumlx += w * x[i] * F(li)
            suml2 += w * F(li) * F(li)
        if suml2 > ZERO and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True, error_model="numpy", inline="always")
def make_q3_quants(n, nmax, x, L):
    """Q3_K's symmetric fit with coordinate-descent refinement (Q:697-754, do_rmse); codes L in [0, 2*nmax-1]."""
    amax, fmax = signed_absmax(x, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    iscale = F(-nmax) / fmax
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        li = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = li
        w = x[i] * x[i]
        sumlx += w * x[i] * F(li)
        suml2 += w * F(li) * F(li)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * F(L[i])
            if slx > ZERO:
                sl2 = suml2 - w * F(L[i]) * F(L[i])
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * F(new_l)
                    sl2 += w * F(new_l) * F(new_l)
                    if sl2 > ZERO and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > ZERO else ZERO


@njit(cache=True, error_model="numpy", inline="always")
def make_qp_quants(n, nmax, x, L, qw):
    """Unsigned fit of non-negative values (block scales/mins on the imatrix path, Q:1076-1147); L is uint8 and,
    as in C, stores codes modulo 256."""
    fmax = ZERO
    for i in range(n):
        fmax = max(fmax, x[i])
    if fmax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    iscale = F(nmax) / fmax
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = ONE / iscale
    best_mse = ZERO
    for i in range(n):
        diff = x[i] - scale * F(L[i])
        best_mse += qw[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (TENTH * F(step) + F(nmax)) / fmax
        scale_is = ONE / iscale_is
        mse = ZERO
        for i in range(n):
            li = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F(li)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        li = min(nmax, nearest_int(iscale * x[i]))
        L[i] = li & 0xFF
        w = qw[i]
        sumlx += w * x[i] * F(li)
        suml2 += w * F(li) * F(li)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            slx = sumlx - w * x[i] * F(L[i])
            sl2 = suml2 - w * F(L[i]) * F(L[i])
            if slx > ZERO and sl2 > ZERO:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w * x[i] * F(new_l)
                    sl2 += w * F(new_l) * F(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > ZERO else ZERO
