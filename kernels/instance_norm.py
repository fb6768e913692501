"""cond_instance_norm_plus (CondInstanceNorm++, DESIGN.md section 2) in Triton, forward and backward.

A plane is the H*W values of one (n, c). Its elements sit at base(n, c) + hw * stride_hw, with
stride_hw = 1 for contiguous x and C for channels_last, so every kernel works on tiles of
[BLOCK_P planes, BLOCK_HW positions] addressed by strides and serves both memory formats. Small
planes pack many per program; a plane larger than the tile is walked in chunks (the reduction
kernels loop over them, and when there are too few planes to fill TARGET_PROGRAMS programs they also
split each plane into ranges, merged afterwards; the elementwise kernels give each chunk a program).

Forward, two passes over x (the per-sample statistics need every channel's mean before any output):
  1. _plane_stats: mu and rstd = 1/sqrt(var + eps) per plane: per chunk a mean refined by the mean
     of its residuals and the sum of squared residuals, merged across chunks with Chan's formula (no
     E[x^2] - E[x]^2 cancellation, and a large mean loses no precision); _merge_stats combines a
     plane's ranges the same way (in float64) when it was split.
  2. _apply: each program first reduces the (N, C) plane means of its planes' sample(s), read
     coalesced BLOCK_C channels at a time, to m, v and rv = 1/sqrt(v + eps) (muhat = (mu - m) rv),
     then y = act(gamma * ((x - mu) * rstd + alpha * muhat) + beta), stored in x's dtype and layout.
  Two launches (three with split planes); no per-sample launch.
Backward, two passes over x and dy (g is recomputed from x and the saved statistics, y is not kept;
m and rv again from the saved plane means, in the programs that use them):
  1. _backward_sums: per plane and position range S1 = sum dg, S2 = sum dg * xhat, dg = dy * act'(g).
  2. _backward_apply: each program sums its planes' ranges, reduces its sample(s) over C to the
     gradient reaching mu through muhat, and stores dx = gamma rstd (dg - S1/HW - xhat S2/HW) + dmu/HW;
     the programs of the first position block also store the per-(n, c) parameter grads
     dgamma = S2 + alpha muhat S1, dalpha = gamma muhat S1, dbeta = S1 (summed over N in torch for
     shared (C,) parameters).
  Two launches, whether or not the planes are split.
When a whole sample fits one program (next_pow2(C) * next_pow2(H*W) <= SAMPLE_TILE, the common case
for NCSN feature maps), _fused_forward and _fused_backward do all of the above in one program per
sample: one read of x (and dy), one write, one launch each way. The split kernels serve larger samples.
All arithmetic and statistics are float32 whatever the storage dtype.
"""
from __future__ import annotations

from typing import TypedDict

import torch
import triton
import triton.language as tl

from fastscore.backend.protocol import Tensor, acc_dtype

from . import _common

TILE = 4096                 # elements per program tile; tests shrink it to force the looping paths
SAMPLE_TILE = 8192          # a sample of at most this many (padded) values takes the one-pass kernels
CHANNELS_LAST_PLANES = 32   # planes per tile for channels_last, so loads run along C (contiguous)
SAMPLE_BLOCK_C = 1024       # channels per step of the per-sample kernels
TARGET_PROGRAMS = 1024      # reductions over few large planes split each plane into position ranges


# ----------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _tile(pid_p, pid_hw, P, C, HW, stride_n, stride_c, stride_hw,
          BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Planes p of this tile, their element offsets [BLOCK_P, BLOCK_HW] and the validity mask."""
    p = tl.cast(pid_p, tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    hw = tl.cast(pid_hw, tl.int64) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    base = (p // C) * stride_n + (p % C) * stride_c
    offs = base[:, None] + hw[None, :] * stride_hw
    mask = (p < P)[:, None] & (hw < HW)[None, :]
    return p, offs, mask


@triton.jit
def _param(ptr, p, C, row_stride, col_stride, mask):
    """gamma/alpha/beta of planes p as float32, read in place through their strides: (N, C) views of
    any layout (embedding slices, transposes, expansions), or (C,) with row_stride 0."""
    return tl.load(ptr + (p // C) * row_stride + (p % C) * col_stride, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _activate(g, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(g > 0, g, tl.exp(g) - 1.0)
    elif ACT == 2:
        return tl.where(g < 0, 0.0, g)  # NaN stays NaN, as torch.relu (maximum may drop it)
    else:
        return g


@triton.jit
def _activation_slope(g, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(g > 0, 1.0, tl.exp(g))
    elif ACT == 2:
        return tl.where(g > 0, 1.0, 0.0)
    else:
        return tl.full(g.shape, 1.0, tl.float32)


@triton.jit
def _plane_coefficients(p, pmask, C, mu_ptr, rstd_ptr, m, rv, muhat_scale, gamma_ptr, alpha_ptr, beta_ptr,
                        gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col,
                        HAS_BETA: tl.constexpr):
    """Per-plane mu, rstd, gamma, alpha, muhat = (mu - m) rv (m, rv: the plane's sample moments), and
    b = gamma * alpha * muhat + beta: g = gamma * xhat + b."""
    mu = tl.load(mu_ptr + p, mask=pmask, other=0.0)
    rstd = tl.load(rstd_ptr + p, mask=pmask, other=0.0)
    muhat = tl.where(pmask, (mu - m) * rv * muhat_scale, 0.0)
    gamma = _param(gamma_ptr, p, C, gamma_stride, gamma_col, pmask)
    alpha = _param(alpha_ptr, p, C, alpha_stride, alpha_col, pmask)
    shift = gamma * alpha * muhat
    if HAS_BETA:
        shift += _param(beta_ptr, p, C, beta_stride, beta_col, pmask)
    return mu, rstd, gamma, alpha, muhat, shift


# ----------------------------------------------------------------------------------------------
# Forward kernels


@triton.jit
def _chan_merge(mean, m2, count_a, mean_b, m2_b, count_b):
    """Chan et al.: (mean, m2) of count_a values merged with (mean_b, m2_b) of count_b more."""
    total = count_a + count_b
    delta = mean_b - mean
    return mean + delta * (count_b / total), m2 + m2_b + delta * delta * (count_a * count_b / total)


@triton.jit
def _chunk_stats(x, mask, count):
    """(mean, m2) of the masked values of each row of a chunk: the mean refined once by the mean of
    the residuals (the first sum carries the rounding of |mean|-sized terms), m2 summed over the
    refined residuals, so a plane whose mean is large next to its spread keeps its precision."""
    mean = tl.sum(x, axis=1) / count
    d = tl.where(mask, x - mean[:, None], 0.0)
    correction = tl.sum(d, axis=1) / count
    d = tl.where(mask, d - correction[:, None], 0.0)
    return mean + correction, tl.sum(d * d, axis=1)


@triton.jit
def _plane_stats(x_ptr, mu_ptr, rstd_ptr, part_ptr, P, C, HW, stride_n, stride_c, stride_hw, eps, split_len,
                 SPLIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Planes of block program_id(0), positions [split * split_len, ...) for split = program_id(1).
    Unsplit: stores mu and rstd. Split: stores the float64 (mean, m2) of the range in part."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    p = tl.cast(pid, tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    # The merge runs in float64 (a few scalars per plane and chunk: free next to the chunk's load), so
    # the statistics of a plane keep float32 precision however many chunks it spans.
    mean = tl.zeros([BLOCK_P], tl.float64)
    m2 = tl.zeros([BLOCK_P], tl.float64)
    begin = split * split_len
    end = tl.minimum(begin + split_len, HW)
    start = begin
    while start < end:
        p, offs, mask = _tile(pid, 0, P, C, HW, stride_n, stride_c, stride_hw, BLOCK_P, BLOCK_HW)
        offs += start * stride_hw
        mask &= (start + tl.arange(0, BLOCK_HW) < HW)[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        count_b = tl.minimum(HW - start, BLOCK_HW).to(tl.float32)
        mean_b, m2_b = _chunk_stats(x, mask, count_b)
        mean, m2 = _chan_merge(mean, m2, tl.cast(start - begin, tl.float64), mean_b.to(tl.float64),
                               m2_b.to(tl.float64), count_b.to(tl.float64))
        start += BLOCK_HW
    if SPLIT:
        part = part_ptr + (p * tl.num_programs(1) + split) * 2
        tl.store(part, mean, mask=pmask)
        tl.store(part + 1, m2, mask=pmask)
    else:
        tl.store(mu_ptr + p, mean.to(tl.float32), mask=pmask)
        tl.store(rstd_ptr + p, (1.0 / tl.sqrt(m2 / HW + eps)).to(tl.float32), mask=pmask)


@triton.jit
def _merge_stats(part_ptr, mu_ptr, rstd_ptr, P, HW, eps, splits, split_len, BLOCK_P: tl.constexpr):
    """mu and rstd of planes whose statistics _plane_stats computed in `splits` position ranges."""
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    mean = tl.zeros([BLOCK_P], tl.float64)
    m2 = tl.zeros([BLOCK_P], tl.float64)
    split = 0
    while split < splits:
        part = part_ptr + (p * splits + split) * 2
        count_a = split * split_len
        count_b = tl.minimum(HW - count_a, split_len).to(tl.float64)
        mean_b = tl.load(part, mask=pmask, other=0.0)
        m2_b = tl.load(part + 1, mask=pmask, other=0.0)
        mean, m2 = _chan_merge(mean, m2, tl.cast(count_a, tl.float64), mean_b, m2_b, count_b)
        split += 1
    tl.store(mu_ptr + p, mean.to(tl.float32), mask=pmask)
    tl.store(rstd_ptr + p, (1.0 / tl.sqrt(m2 / HW + eps)).to(tl.float32), mask=pmask)


# ----------------------------------------------------------------------------------------------
# Per-sample moments of the plane means, computed by the programs that need them (no launch of their own)


@triton.jit
def _channel_moments(mu, cmask, C, inv_cm1, eps):
    """m = mean_c mu and rv = 1/sqrt(v + eps), v = sum_c (mu - m)^2 / (C - 1), of one sample whose C
    plane means are the masked vector mu. inv_cm1 = 1 / (C - 1) comes from the host (a float, never
    specialized on); for C == 1 it is 0: v is undefined, muhat is 0 by definition (muhat_scale = 0) and
    rv (finite) goes unused."""
    m = tl.sum(tl.where(cmask, mu, 0.0), axis=0) / C
    dm = tl.where(cmask, mu - m, 0.0)
    return m, 1.0 / tl.sqrt_rn(tl.sum(dm * dm, axis=0) * inv_cm1 + eps)


@triton.jit
def _sample_moments(mu_ptr, n, C, inv_cm1, eps, BLOCK_C: tl.constexpr):
    """(m, rv) of sample n from its row of the (N, C) plane means, read BLOCK_C channels at a time."""
    row = mu_ptr + n * C
    total = tl.zeros([BLOCK_C], tl.float32)
    c0 = 0
    while c0 < C:
        c = c0 + tl.arange(0, BLOCK_C)
        total += tl.load(row + c, mask=c < C, other=0.0)
        c0 += BLOCK_C
    m = tl.sum(total, axis=0) / C
    sq = tl.zeros([BLOCK_C], tl.float32)
    c0 = 0
    while c0 < C:  # two passes (the row is in cache), as _channel_moments: no E[mu^2] - m^2 cancellation
        c = c0 + tl.arange(0, BLOCK_C)
        d = tl.where(c < C, tl.load(row + c, mask=c < C, other=0.0) - m, 0.0)
        sq += d * d
        c0 += BLOCK_C
    return m, 1.0 / tl.sqrt_rn(tl.sum(sq, axis=0) * inv_cm1 + eps)


@triton.jit
def _sample_range(pid, P, C, BLOCK_P: tl.constexpr):
    """First and last sample whose planes fall in plane block pid (small planes pack several samples)."""
    first = tl.cast(pid, tl.int64) * BLOCK_P
    return first // C, (tl.minimum(first + BLOCK_P, P) - 1) // C


@triton.jit
def _tile_moments(mu_ptr, p, pid, P, C, inv_cm1, eps, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(m, rv) of the sample of each plane p of plane block pid."""
    m = tl.zeros([BLOCK_P], tl.float32)
    rv = tl.zeros([BLOCK_P], tl.float32)
    n, last = _sample_range(pid, P, C, BLOCK_P)
    while n <= last:
        m_n, rv_n = _sample_moments(mu_ptr, n, C, inv_cm1, eps, BLOCK_C)
        mine = p // C == n
        m = tl.where(mine, m_n, m)
        rv = tl.where(mine, rv_n, rv)
        n += 1
    return m, rv


@triton.jit
def _apply(x_ptr, y_ptr, mu_ptr, rstd_ptr, gamma_ptr, alpha_ptr, beta_ptr,
           gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, P, C, HW, stride_n,
           stride_c, stride_hw, inv_cm1, muhat_scale, eps,
           ACT: tl.constexpr, HAS_BETA: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr,
           BLOCK_C: tl.constexpr):
    """y of a tile. Each program first reduces the plane means of its planes' sample(s) to (m, rv)."""
    p, offs, mask = _tile(tl.program_id(0), tl.program_id(1), P, C, HW, stride_n, stride_c, stride_hw,
                          BLOCK_P, BLOCK_HW)
    pmask = p < P
    m, rv = _tile_moments(mu_ptr, p, tl.program_id(0), P, C, inv_cm1, eps, BLOCK_P, BLOCK_C)
    mu, rstd, gamma, alpha, muhat, shift = _plane_coefficients(
        p, pmask, C, mu_ptr, rstd_ptr, m, rv, muhat_scale, gamma_ptr, alpha_ptr, beta_ptr,
        gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, HAS_BETA)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mu[:, None]) * rstd[:, None]
    g = gamma[:, None] * (xhat + (alpha * muhat)[:, None])
    if HAS_BETA:
        g += _param(beta_ptr, p, C, beta_stride, beta_col, pmask)[:, None]
    tl.store(y_ptr + offs, _activate(g, ACT).to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Backward kernels


@triton.jit
def _recompute(x_ptr, dy_ptr, offs, mask, mu, rstd, gamma, shift, ACT: tl.constexpr):
    """xhat and dg = dy * act'(g) of a tile, g recomputed from x and the saved statistics."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mu[:, None]) * rstd[:, None]
    if ACT != 0:
        g = gamma[:, None] * xhat + shift[:, None]
        dy = dy * _activation_slope(g, ACT)
    return tl.where(mask, xhat, 0.0), tl.where(mask, dy, 0.0)


@triton.jit
def _backward_sums(x_ptr, dy_ptr, mu_ptr, rstd_ptr, gamma_ptr, alpha_ptr, beta_ptr,
                   gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col,
                   s1_ptr, s2_ptr, P, C, HW, stride_n, stride_c, stride_hw, split_len, inv_cm1, muhat_scale, eps,
                   ACT: tl.constexpr, HAS_BETA: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """Per plane and position range (program_id(1)): S1 = sum dg and S2 = sum dg * xhat, stored at
    [plane, range] of (P, ranges) arrays (_backward_apply sums the ranges)."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    p = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    if ACT != 0:  # muhat enters g only through the activation's slope
        m, rv = _tile_moments(mu_ptr, p, pid, P, C, inv_cm1, eps, BLOCK_P, BLOCK_C)
    else:
        m = tl.zeros([BLOCK_P], tl.float32)
        rv = tl.zeros([BLOCK_P], tl.float32)
    mu, rstd, gamma, alpha, muhat, shift = _plane_coefficients(
        p, pmask, C, mu_ptr, rstd_ptr, m, rv, muhat_scale, gamma_ptr, alpha_ptr, beta_ptr,
        gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, HAS_BETA)
    s1 = tl.zeros([BLOCK_P], tl.float32)
    s2 = tl.zeros([BLOCK_P], tl.float32)
    begin = split * split_len
    end = tl.minimum(begin + split_len, HW)
    start = begin
    while start < end:
        _, offs, mask = _tile(pid, 0, P, C, HW, stride_n, stride_c, stride_hw, BLOCK_P, BLOCK_HW)
        offs += start * stride_hw
        mask &= (start + tl.arange(0, BLOCK_HW) < HW)[None, :]
        xhat, dg = _recompute(x_ptr, dy_ptr, offs, mask, mu, rstd, gamma, shift, ACT)
        s1 += tl.sum(dg, axis=1)
        s2 += tl.sum(dg * xhat, axis=1)
        start += BLOCK_HW
    tl.store(s1_ptr + p * tl.num_programs(1) + split, s1, mask=pmask)
    tl.store(s2_ptr + p * tl.num_programs(1) + split, s2, mask=pmask)


@triton.jit
def _plane_sums(s_ptr, p, pmask, splits):
    """S of planes p summed over their `splits` position ranges ((P, splits) array)."""
    total = tl.load(s_ptr + p * splits, mask=pmask, other=0.0)
    split = 1
    while split < splits:
        total += tl.load(s_ptr + p * splits + split, mask=pmask, other=0.0)
        split += 1
    return total


@triton.jit
def _sample_dmu_terms(mu_ptr, s1_ptr, gamma_ptr, alpha_ptr, gamma_stride, alpha_stride, gamma_col, alpha_col,
                      n, C, splits, m, rv, inv_cm1, muhat_scale, BLOCK_C: tl.constexpr):
    """The sums over the C channels of sample n that dL/dmu needs (see _backward_apply): with
    D_c = alpha_c gamma_c S1_c, proj = sum_c D_c muhat_c / (C - 1) and mean_c G_c, where
    G_c = rv (D_c - muhat_c proj), so sum_c G_c = rv (sum_c D_c - proj sum_c muhat_c)."""
    dot = tl.zeros([BLOCK_C], tl.float32)
    d_total = tl.zeros([BLOCK_C], tl.float32)
    muhat_total = tl.zeros([BLOCK_C], tl.float32)
    c0 = 0
    while c0 < C:
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        p = n * C + c
        muhat = tl.where(cm, (tl.load(mu_ptr + p, mask=cm, other=0.0) - m) * rv * muhat_scale, 0.0)
        d = _param(alpha_ptr, p, C, alpha_stride, alpha_col, cm) \
            * _param(gamma_ptr, p, C, gamma_stride, gamma_col, cm) * _plane_sums(s1_ptr, p, cm, splits)
        dot += d * muhat
        d_total += d
        muhat_total += muhat
        c0 += BLOCK_C
    proj = tl.sum(dot, axis=0) * inv_cm1
    return proj, rv * (tl.sum(d_total, axis=0) - proj * tl.sum(muhat_total, axis=0)) / C


@triton.jit
def _backward_apply(x_ptr, dy_ptr, dx_ptr, mu_ptr, rstd_ptr, gamma_ptr, alpha_ptr, beta_ptr,
                    gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, s1_ptr, s2_ptr,
                    dgamma_ptr, dalpha_ptr, dbeta_ptr, grad_ld, P, C, HW, stride_n, stride_c, stride_hw, splits,
                    inv_cm1, muhat_scale, eps,
                    ACT: tl.constexpr, HAS_BETA: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    """dx of a tile. Each program reduces its planes' sample(s) over C first: (m, rv) from the plane
    means, then, with D_c = dL/dmuhat_c = alpha_c gamma_c S1_c and muhat = (mu - m) rv,
    dL/d(mu_c - m) = G_c = rv (D_c - muhat_c sum_k D_k muhat_k / (C - 1)), dL/dmu_c = G_c - mean_k G_k.
    The programs of the first position block (program_id(1) == 0) also store the parameter grads of
    their planes: dgamma = S2 + alpha muhat S1, dalpha = gamma muhat S1, dbeta = S1."""
    pid = tl.program_id(0)
    p, offs, mask = _tile(pid, tl.program_id(1), P, C, HW, stride_n, stride_c, stride_hw, BLOCK_P, BLOCK_HW)
    pmask = p < P
    m = tl.zeros([BLOCK_P], tl.float32)
    rv = tl.zeros([BLOCK_P], tl.float32)
    proj = tl.zeros([BLOCK_P], tl.float32)
    g_mean = tl.zeros([BLOCK_P], tl.float32)
    n, last = _sample_range(pid, P, C, BLOCK_P)
    while n <= last:
        m_n, rv_n = _sample_moments(mu_ptr, n, C, inv_cm1, eps, BLOCK_C)
        proj_n, g_mean_n = _sample_dmu_terms(mu_ptr, s1_ptr, gamma_ptr, alpha_ptr, gamma_stride, alpha_stride,
                                             gamma_col, alpha_col, n, C, splits, m_n, rv_n, inv_cm1, muhat_scale,
                                             BLOCK_C)
        mine = p // C == n
        m = tl.where(mine, m_n, m)
        rv = tl.where(mine, rv_n, rv)
        proj = tl.where(mine, proj_n, proj)
        g_mean = tl.where(mine, g_mean_n, g_mean)
        n += 1
    mu, rstd, gamma, alpha, muhat, shift = _plane_coefficients(
        p, pmask, C, mu_ptr, rstd_ptr, m, rv, muhat_scale, gamma_ptr, alpha_ptr, beta_ptr,
        gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, HAS_BETA)
    s1 = _plane_sums(s1_ptr, p, pmask, splits)
    s2 = _plane_sums(s2_ptr, p, pmask, splits)
    dmu = (rv * (alpha * gamma * s1 - muhat * proj) - g_mean) * muhat_scale
    xhat, dg = _recompute(x_ptr, dy_ptr, offs, mask, mu, rstd, gamma, shift, ACT)
    dx = (gamma * rstd)[:, None] * (dg - (s1 / HW)[:, None] - xhat * (s2 / HW)[:, None]) + (dmu / HW)[:, None]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    first = pmask & (tl.program_id(1) == 0)
    g = (p // C) * grad_ld + p % C  # the planes' places in the (N, K, C) parameter-gradient buffer
    tl.store(dgamma_ptr + g, s2 + alpha * muhat * s1, mask=first)
    tl.store(dalpha_ptr + g, gamma * muhat * s1, mask=first)
    if HAS_BETA:
        tl.store(dbeta_ptr + g, s1, mask=first)


# ----------------------------------------------------------------------------------------------
# One-pass kernels: a whole sample (C x HW, padded to powers of two) in one program's registers


@triton.jit
def _sample_tile(C, HW, stride_n, stride_c, stride_hw, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    hw = tl.arange(0, BLOCK_HW)
    cmask = c < C
    offs = n * stride_n + c[:, None].to(tl.int64) * stride_c + hw[None, :].to(tl.int64) * stride_hw
    return n, c, cmask, offs, cmask[:, None] & (hw < HW)[None, :]


@triton.jit
def _fused_forward(x_ptr, y_ptr, mu_ptr, rstd_ptr, gamma_ptr, alpha_ptr, beta_ptr,
                   gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, C, HW, stride_n,
                   stride_c, stride_hw,
                   inv_cm1, muhat_scale, eps,
                   ACT: tl.constexpr, HAS_BETA: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Sample n in one read of x: plane statistics, channel statistics, normalise, affine, act, store."""
    n, c, cmask, offs, mask = _sample_tile(C, HW, stride_n, stride_c, stride_hw, BLOCK_C, BLOCK_HW)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mu, m2 = _chunk_stats(x, mask, HW)
    d = tl.where(mask, x - mu[:, None], 0.0)
    rstd = 1.0 / tl.sqrt_rn(m2 / HW + eps)
    m, rv = _channel_moments(mu, cmask, C, inv_cm1, eps)
    muhat = tl.where(cmask, mu - m, 0.0) * rv * muhat_scale
    p = n * C + c
    gamma = _param(gamma_ptr, p, C, gamma_stride, gamma_col, cmask)
    alpha = _param(alpha_ptr, p, C, alpha_stride, alpha_col, cmask)
    g = gamma[:, None] * (d * rstd[:, None] + (alpha * muhat)[:, None])
    if HAS_BETA:
        g += _param(beta_ptr, p, C, beta_stride, beta_col, cmask)[:, None]
    tl.store(y_ptr + offs, _activate(g, ACT).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mu_ptr + p, mu, mask=cmask)
    tl.store(rstd_ptr + p, rstd, mask=cmask)


@triton.jit
def _fused_backward(x_ptr, dy_ptr, dx_ptr, mu_ptr, rstd_ptr, gamma_ptr, alpha_ptr, beta_ptr,
                    gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col,
                    dgamma_ptr, dalpha_ptr, dbeta_ptr,
                    grad_ld, C, HW, stride_n, stride_c, stride_hw, inv_cm1, muhat_scale, eps,
                    ACT: tl.constexpr, HAS_BETA: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Sample n in one read of x and dy: (m, rv) from the saved plane means as the forward computed them,
    then the backward stages of the split kernels in registers."""
    n, c, cmask, offs, mask = _sample_tile(C, HW, stride_n, stride_c, stride_hw, BLOCK_C, BLOCK_HW)
    p = n * C + c
    m, rv = _channel_moments(tl.load(mu_ptr + p, mask=cmask, other=0.0), cmask, C, inv_cm1, eps)
    mu, rstd, gamma, alpha, muhat, shift = _plane_coefficients(
        p, cmask, C, mu_ptr, rstd_ptr, m, rv, muhat_scale, gamma_ptr, alpha_ptr, beta_ptr,
        gamma_stride, alpha_stride, beta_stride, gamma_col, alpha_col, beta_col, HAS_BETA)
    xhat, dg = _recompute(x_ptr, dy_ptr, offs, mask, mu, rstd, gamma, shift, ACT)
    s1 = tl.sum(dg, axis=1)
    s2 = tl.sum(dg * xhat, axis=1)
    dmuhat = alpha * gamma * s1
    proj = tl.sum(dmuhat * muhat, axis=0) * inv_cm1
    g_c = tl.where(cmask, rv * (dmuhat - muhat * proj), 0.0)
    dmu = (g_c - tl.sum(g_c, axis=0) / C) * muhat_scale
    dx = (gamma * rstd)[:, None] * (dg - (s1 / HW)[:, None] - xhat * (s2 / HW)[:, None]) + (dmu / HW)[:, None]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    g = n * grad_ld + c  # the sample's row of the (N, K, C) parameter-gradient buffer
    tl.store(dgamma_ptr + g, s2 + alpha * muhat * s1, mask=cmask)
    tl.store(dalpha_ptr + g, gamma * muhat * s1, mask=cmask)
    if HAS_BETA:
        tl.store(dbeta_ptr + g, s1, mask=cmask)


# ----------------------------------------------------------------------------------------------
# Host side


def _geometry(x: Tensor) -> tuple[int, int, int, tuple[int, int, int]]:
    """(P, C, HW, (stride_n, stride_c, stride_hw)) of a dense 4-D x: plane (n, c), position hw."""
    n, c, h, w = x.shape
    # The position stride from the layout, not from x.stride(3): a size-1 dimension's stride is
    # arbitrary (x.transpose(2, 3) of an (N, C, 1, W) tensor is contiguous with stride(3) = W).
    stride_hw = c if _common.layout(x) == "channels_last" else 1
    return n * c, c, h * w, (x.stride(0), x.stride(1), stride_hw)


def _blocks(p: int, c: int, hw: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_HW): a tile of about TILE elements; many small planes per tile, large planes
    in TILE-sized chunks; for channels_last up to CHANNELS_LAST_PLANES neighbouring channels so loads
    run along contiguous memory."""
    hw_pow = triton.next_power_of_2(hw)
    if channels_last:
        block_p = min(triton.next_power_of_2(p), CHANNELS_LAST_PLANES, TILE)
        return block_p, min(hw_pow, max(1, TILE // block_p))
    block_hw = min(hw_pow, TILE)
    return min(triton.next_power_of_2(p), max(1, TILE // block_hw)), block_hw


def _sample_blocks(c: int, hw: int) -> tuple[int, int] | None:
    """(BLOCK_C, BLOCK_HW) of the one-pass kernels, or None when a sample does not fit SAMPLE_TILE."""
    block_c, block_hw = triton.next_power_of_2(c), triton.next_power_of_2(hw)
    return (block_c, block_hw) if block_c * block_hw <= SAMPLE_TILE else None


def _sample_block_c(c: int) -> int:
    """BLOCK_C of the loops over a sample's channels in the split kernels."""
    return min(SAMPLE_BLOCK_C, int(triton.next_power_of_2(c)))


def _splits(p: int, hw: int, block_p: int, block_hw: int) -> tuple[int, int]:
    """(ranges, positions per range) for the statistics/backward-sum kernels: a plane's positions are
    split into ranges (programs) when there are too few plane blocks to fill TARGET_PROGRAMS."""
    chunks = triton.cdiv(hw, block_hw)
    wanted = max(1, min(chunks, TARGET_PROGRAMS // triton.cdiv(p, block_p)))
    per_range = triton.cdiv(chunks, wanted)
    return triton.cdiv(chunks, per_range), per_range * block_hw


def _warps(block_p: int, block_hw: int) -> int:
    tile = block_p * block_hw
    return 16 if tile >= 8192 else 8 if tile >= 4096 else 4


def _channel_constants(c: int) -> tuple[float, float]:
    """(1 / (C - 1), muhat scale): (0, 0) for C == 1, where muhat is defined as 0 (no gradient through it)."""
    return (1.0 / (c - 1), 1.0) if c > 1 else (0.0, 0.0)


def _params(gamma: Tensor, alpha: Tensor, beta: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int, int, int,
                                                                         int, int, int]:
    """Kernel arguments (gamma, alpha, beta, their row strides, their column strides): each may be (N, C)
    with any strides or (C,) (row stride 0, shared by every sample) independently, read in place; a
    missing beta is replaced by gamma, unread."""
    beta = beta if beta is not None else gamma
    (gr, ar, br), (gc, ac, bc) = ((t.stride(0) if t.dim() == 2 else 0 for t in (gamma, alpha, beta)),
                                  (t.stride(-1) for t in (gamma, alpha, beta)))
    return gamma, alpha, beta, gr, ar, br, gc, ac, bc


class _Float32(TypedDict):
    """Factory keywords (torch.empty(..., **f32)) of the float32 work buffers on x's device."""
    device: torch.device
    dtype: torch.dtype


def norm_forward(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float,
                 activation: int) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): the backend primitive (fastscore/backend/protocol.py)."""
    n = x.shape[0]
    p, c, hw, strides = _geometry(x)
    f32 = _Float32(device=x.device, dtype=torch.float32)
    mu, rstd = (torch.empty(n, c, **f32) for _ in range(2))
    y = torch.empty_like(x)
    params = _params(gamma, alpha, beta)
    has_beta = beta is not None
    sample_blocks = _sample_blocks(c, hw)
    if sample_blocks is not None:  # one launch
        _fused_forward[(n,)](x, y, mu, rstd, *params, c, hw, *strides, *_channel_constants(c), eps,
                             ACT=activation, HAS_BETA=has_beta, BLOCK_C=sample_blocks[0], BLOCK_HW=sample_blocks[1],
                             num_warps=_warps(*sample_blocks))
    else:  # two launches, three when the planes are split into ranges
        block_p, block_hw = _blocks(p, c, hw, _common.layout(x) == "channels_last")
        warps = _warps(block_p, block_hw)
        splits, split_len = _splits(p, hw, block_p, block_hw)
        part = torch.empty(p, splits, 2, device=x.device, dtype=torch.float64) if splits > 1 else mu
        _plane_stats[(triton.cdiv(p, block_p), splits)](x, mu, rstd, part, p, c, hw, *strides, eps, split_len,
                                                        SPLIT=splits > 1, BLOCK_P=block_p, BLOCK_HW=block_hw,
                                                        num_warps=warps)
        if splits > 1:
            _merge_stats[(triton.cdiv(p, 128),)](part, mu, rstd, p, hw, eps, splits, split_len, BLOCK_P=128)
        # Each _apply program reduces its sample's plane means to (m, rv) itself: no per-sample launch.
        _apply[(triton.cdiv(p, block_p), triton.cdiv(hw, block_hw))](
            x, y, mu, rstd, *params, p, c, hw, *strides, *_channel_constants(c), eps, ACT=activation,
            HAS_BETA=has_beta, BLOCK_P=block_p, BLOCK_HW=block_hw, BLOCK_C=_sample_block_c(c), num_warps=warps)
    dtype = acc_dtype(x)  # the kernels compute in float32; the contract hands over acc
    return y, mu.to(dtype), rstd.to(dtype)


def norm_backward(dy: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
                  rstd: Tensor, eps: float, activation: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(dx, dgamma, dalpha, dbeta) per sample: the backend primitive (fastscore/backend/protocol.py)."""
    n = x.shape[0]
    p, c, hw, strides = _geometry(x)
    f32 = _Float32(device=x.device, dtype=torch.float32)
    mu, rstd = mean.to(torch.float32).contiguous(), rstd.to(torch.float32).contiguous()
    # The parameter grads as rows of one (N, K, C) buffer (protocol.py): dgamma, dalpha, dbeta (= S1).
    dparams = torch.empty(n, 3 if beta is not None else 2, c, **f32)
    dgamma, dalpha = dparams[:, 0], dparams[:, 1]
    dbeta = dparams[:, 2] if beta is not None else dgamma  # unwritten without beta
    dx = torch.empty_like(x)
    params = _params(gamma, alpha, beta)
    has_beta = beta is not None
    sample_blocks = _sample_blocks(c, hw)
    # muhat and 1/sqrt(v + eps) are recomputed from the plane means inside the kernels that use them.
    if sample_blocks is not None:  # one launch
        _fused_backward[(n,)](x, dy, dx, mu, rstd, *params, dgamma, dalpha, dbeta, dgamma.stride(0), c, hw,
                              *strides, *_channel_constants(c), eps, ACT=activation, HAS_BETA=has_beta,
                              BLOCK_C=sample_blocks[0], BLOCK_HW=sample_blocks[1], num_warps=_warps(*sample_blocks))
    else:  # two launches: per-range sums; dx with the per-sample sums over C and the parameter grads
        block_p, block_hw = _blocks(p, c, hw, _common.layout(x) == "channels_last")
        warps = _warps(block_p, block_hw)
        splits, split_len = _splits(p, hw, block_p, block_hw)
        common = dict(ACT=activation, HAS_BETA=has_beta, BLOCK_P=block_p, BLOCK_HW=block_hw,
                      BLOCK_C=_sample_block_c(c), num_warps=warps)
        s1_parts, s2_parts = (torch.empty(p, splits, **f32) for _ in range(2))
        _backward_sums[(triton.cdiv(p, block_p), splits)](x, dy, mu, rstd, *params, s1_parts, s2_parts,
                                                          p, c, hw, *strides, split_len, *_channel_constants(c), eps,
                                                          **common)
        _backward_apply[(triton.cdiv(p, block_p), triton.cdiv(hw, block_hw))](
            x, dy, dx, mu, rstd, *params, s1_parts, s2_parts, dgamma, dalpha, dbeta, dgamma.stride(0), p, c, hw,
            *strides, splits, *_channel_constants(c), eps, **common)
    dtype = acc_dtype(x)  # the kernels compute in float32; the contract hands over acc
    dparams = dparams.to(dtype)
    return dx, dparams[:, 0], dparams[:, 1], dparams[:, 2] if has_beta else None
