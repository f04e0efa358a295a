"""Fused causal attention in Triton: FlashAttention-2 forward and backward with in-kernel dropout.

Installed as `fastgpt.kernels.attention`; `fastgpt.ops.cuda` registers the launchers below as
the CUDA kernels of the ops `fastgpt::causal_attention`, `::causal_attention_qkv`, their backward
ops and `::attention_keep_mask` (fastgpt/ops/attention.py names them).

What it computes: out = dropout(softmax(q kᵀ / sqrt(D) + causal mask)) v for q, k, v (B, H, T, D),
and the row logsumexp of the masked, scaled scores (natural log, float32), which the backward uses
to recompute the probabilities instead of storing the (T, T) matrix.

Supports
- fp16, bf16 and fp32 inputs (any strides, passed to the kernels explicitly: q, k, v share one set,
  the layout of the packed qkv they are views of, and the launchers copy them where they do not),
  with fp32 accumulation and an fp32 online softmax. fp16/bf16 dots run on tensor cores. fp32 dots
  use input_precision="ieee": no TF32, so fp32 results carry fp32 rounding like PyTorch's default
  fp32 matmul (slower than TF32; use bf16 for speed).
- head sizes 1 to 128 (the head axis is padded to a power of two >= 16 and masked); any T (tiles
  on the tail are masked, no "T % 128 == 0" rule).
- dropout on the attention weights from Philox in the kernel: one tl.philox call (counter: column
  block j // 8, row i, b·H + h) gives the 16-bit draws of 8 neighbouring weights, kept iff
  >= round(p·2**16), and kept weights are scaled by 1/(1 - p_eff); the backward regenerates the
  same mask, nothing is stored. This is the mask of `fastgpt.ops.mask.attention_keep_mask`, so CPU
  and GPU runs match element by element.

How: the forward walks key tiles left of the diagonal without any mask, then the diagonal tiles
with the causal mask (tiles right of the diagonal are never visited). The backward runs a
preprocessing pass delta = rowsum(dO ∘ O), then one backward kernel twice, each launch with its
own tiles: one program per key tile accumulating dK and dV over the query tiles at and below the
diagonal, then one per query tile accumulating dQ over the key tiles at and left of it. No
atomics: every output element is written by exactly one program, so results are identical run to
run.

Tile sizes are autotuned per (T rounded up to a power of two, head size, dtype, dropout on/off).
Under TRITON_INTERPRET=1 (read by Triton when the kernels are decorated, i.e. when this module is
imported) each kernel has one small configuration, so the interpreter tests stay fast, with
query and key tiles of different sizes so the multi-tile diagonal paths are exercised.

Limits: no float64 (use the reference), no head size above 128, T < 2**32.
"""
import math

import torch
import triton
import triton.language as tl

from fastgpt.kernels.philox import philox_draws
from fastgpt.ops.layout import heads, split_heads
from fastgpt.ops.mask import dropout_keep_scale, dropout_threshold

# Whether Triton was told to interpret (TRITON_INTERPRET=1) when these kernels were decorated:
# then they run on CPU tensors in Triton's interpreter; otherwise they need a CUDA device.
INTERPRETED = bool(triton.knobs.runtime.interpret)

MAX_HEAD_SIZE = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

LOG2E = tl.constexpr(1.4426950408889634)  # the kernels use exp2: e**x = 2**(x·log2 e)
LN2 = tl.constexpr(0.6931471805599453)


# ---------------------------------------------------------------------------------------------
# Autotuning: configurations keyed on shape
# ---------------------------------------------------------------------------------------------


def _configs(gpu_configs: list[tuple[int, int, int, int]],
             interpreter_blocks: tuple[int, int]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) on a GPU; one small config in the interpreter.
    A short hand-picked list: every config is compiled and timed on the first call of each
    autotuning key, and training meets two keys per run (dropout on, and off for evaluation)."""
    if INTERPRETED:
        block_m, block_n = interpreter_blocks
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in gpu_configs]


def _prune_to_length(configs, named_args, **kwargs):
    """Drop tiles larger than the sequence (all padding); keep the smallest tile if none fits.
    `named_args` holds the positional arguments, `kwargs` the keyword ones (T_BUCKET among them)."""
    t_bucket = {**named_args, **kwargs}["T_BUCKET"]
    fits = [c for c in configs if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= t_bucket]
    smallest = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in configs)
    return fits or [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] == smallest]


# Sequence length rounded up to a power of two, head size, dropout on/off (and the dtypes, which
# the autotuner adds by itself): sampling grows T one token at a time and would re-tune each step.
_TUNE_KEY = ["T_BUCKET", "HEAD_DIM", "DROPOUT"]
_PRUNE = {"early_config_prune": _prune_to_length}

# Forward and dQ: BLOCK_M query rows against BLOCK_N-key tiles (BLOCK_N divides BLOCK_M).
_ROW_TILES = _configs([(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                       (64, 32, 4, 2), (32, 16, 4, 2)], interpreter_blocks=(32, 16))
# dK/dV: BLOCK_N key rows against BLOCK_M-query tiles (BLOCK_M divides BLOCK_N).
_COLUMN_TILES = _configs([(32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3),
                          (16, 64, 4, 2), (16, 32, 4, 2)], interpreter_blocks=(16, 32))


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


@triton.jit
def _keep(seed, bh, rows, col0, threshold, N_COLS: tl.constexpr):
    """Dropout keep-mask (len(rows), N_COLS) of head bh = b·H + h, columns col0 .. col0 + N_COLS - 1
    (col0 and N_COLS multiples of 8): Philox counter (column block, row, bh lo, bh hi), kept iff
    the draw >= threshold (fastgpt.ops.mask.attention_keep_mask)."""
    zero = tl.zeros([rows.shape[0], N_COLS // 8], dtype=tl.uint32)
    blocks = (col0 // 8 + tl.arange(0, N_COLS // 8)).to(tl.uint32)
    draws = philox_draws(seed, zero + blocks[None, :], zero + rows.to(tl.uint32)[:, None],
                         zero + (bh & 0xFFFFFFFF).to(tl.uint32), zero + (bh >> 32).to(tl.uint32))
    return draws >= threshold.to(tl.uint32)


@triton.jit
def _load_rows(ptr, offs_rows, offs_d, stride_t, stride_d, T, HEAD_DIM: tl.constexpr,
               MASK_ROWS: tl.constexpr):
    """A (rows, BLOCK_D) tile, zero outside the head size and, with MASK_ROWS, past row T - 1."""
    mask = offs_d[None, :] < HEAD_DIM
    if MASK_ROWS:
        mask = mask & (offs_rows[:, None] < T)
    return tl.load(ptr + offs_rows[:, None] * stride_t + offs_d[None, :] * stride_d,
                   mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, tile, offs_rows, offs_d, stride_t, stride_d, T, HEAD_DIM: tl.constexpr):
    mask = (offs_rows[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    tl.store(ptr + offs_rows[:, None] * stride_t + offs_d[None, :] * stride_d,
             tile.to(ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _forward_tiles(acc, l_i, m_i, q, k_ptr, v_ptr, stride_t, stride_d, offs_m, offs_d, bh, lo, hi,
                   T, qk_scale, seed, threshold, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                   DIAGONAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over key tiles [lo, hi): running max m_i and sum l_i in log2 units, acc the
    unnormalised (dropped) output. DIAGONAL tiles get the causal mask and the tail mask."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, offs_n, offs_d, stride_t, stride_d, T, HEAD_DIM, DIAGONAL)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if DIAGONAL:
            # keys past T are also past every real row, so the causal mask covers the tail
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts every weight, dropped or not
        if DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m, start_n, threshold, BLOCK_N), p, 0.0)
        v = _load_rows(v_ptr, offs_n, offs_d, stride_t, stride_d, T, HEAD_DIM, DIAGONAL)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_ROW_TILES, key=_TUNE_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["seed", "threshold"])
def _forward_kernel(Q, K, V, O, LSE,
                    stride_b, stride_h, stride_t, stride_d,
                    stride_ob, stride_oh, stride_ot, stride_od,
                    H, T, T_BUCKET, sm_scale, seed, threshold, keep_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)  # b·H + h
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    head = b * stride_b + h * stride_h  # where this head starts in q, k and v
    q = _load_rows(Q + head, offs_m, offs_d, stride_t, stride_d, T, HEAD_DIM, True)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E  # scores in log2 units for exp2

    # keys left of the diagonal block: every one is visible to every row of this block
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, K + head, V + head, stride_t, stride_d,
                                   offs_m, offs_d, bh, 0, start_m, T, qk_scale, seed, threshold,
                                   HEAD_DIM, BLOCK_N, False, DROPOUT, DOT_PRECISION)
    # the diagonal block, in BLOCK_N-wide tiles, masked; tiles starting past T are skipped
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, K + head, V + head, stride_t, stride_d,
                                   offs_m, offs_d, bh, start_m, tl.minimum(start_m + BLOCK_M, T), T,
                                   qk_scale, seed, threshold, HEAD_DIM, BLOCK_N, True, DROPOUT,
                                   DOT_PRECISION)

    out = acc / l_i[:, None]
    if DROPOUT:
        out = out * keep_scale
    _store_rows(O + b * stride_ob + h * stride_oh, out, offs_m, offs_d, stride_ot, stride_od, T,
                HEAD_DIM)
    lse = (m_i + tl.log2(l_i)) * LN2  # back to natural log
    tl.store(LSE + bh * T + offs_m, lse, mask=offs_m < T)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(O, DO, DELTA,
                  stride_ob, stride_oh, stride_ot, stride_od,
                  stride_dob, stride_doh, stride_dot, stride_dod,
                  H, T, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO ∘ O), which equals rowsum(P ∘ dP) with or without dropout."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(O + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_ot, stride_od, T,
                   HEAD_DIM, True)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, offs_d, stride_dot, stride_dod,
                    T, HEAD_DIM, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_t, stride_d,
                stride_dot, stride_dod, start_n, offs_n, offs_d, bh, lo, hi, T, qk_scale, seed,
                threshold, keep_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                DIAGONAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dK, dV of one key tile over query tiles [lo, hi), everything transposed
    (keys along rows). Query rows past T load as zeros (q, dO, lse, delta) and add exactly 0."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_ptr, offs_m, offs_d, stride_t, stride_d, T, HEAD_DIM, True)
        do = _load_rows(do_ptr, offs_m, offs_d, stride_dot, stride_dod, T, HEAD_DIM, True)
        lse = tl.load(lse_ptr + offs_m, mask=offs_m < T, other=0.0) * LOG2E
        delta = tl.load(delta_ptr + offs_m, mask=offs_m < T, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t - lse[None, :])
        if DIAGONAL:
            p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if DROPOUT:
            keep = tl.trans(_keep(seed, bh, offs_m, start_n, threshold, BLOCK_N))
            dp_t = tl.where(keep, dp_t * keep_scale, 0.0)
            dropped_p_t = tl.where(keep, p_t, 0.0)  # times 1/(1-p) once, at the end
        else:
            dropped_p_t = p_t
        dv += tl.dot(dropped_p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_t, stride_d, offs_m, offs_d, bh, lo, hi,
              T, qk_scale, seed, threshold, keep_scale, HEAD_DIM: tl.constexpr,
              BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr, DROPOUT: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    """Accumulate dQ (without the 1/sqrt(D)) of one query tile over key tiles [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, offs_n, offs_d, stride_t, stride_d, T, HEAD_DIM, DIAGONAL)
        v = _load_rows(v_ptr, offs_n, offs_d, stride_t, stride_d, T, HEAD_DIM, DIAGONAL)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        if DIAGONAL:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m, start_n, threshold, BLOCK_N)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["seed", "threshold"])
def _backward_kernel(Q, K, V, DO, LSE, DELTA, DQ, DK, DV,
                     stride_b, stride_h, stride_t, stride_d,
                     stride_dob, stride_doh, stride_dot, stride_dod,
                     stride_gb, stride_gh, stride_gt, stride_gd,
                     H, T, T_BUCKET, sm_scale, seed, threshold, keep_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
                     DOT_PRECISION: tl.constexpr, KEY_TILES: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """With KEY_TILES, dK and dV of the BLOCK_N keys of tile program_id(0), over the queries at and
    below them; otherwise dQ of its BLOCK_M queries, over the keys at and left of them. q, k, v
    share one layout (strides stride_b ..), dq, dk, dv another (stride_gb ..)."""
    bh = tl.program_id(1).to(tl.int64)  # b·H + h
    b, h = bh // H, bh % H
    head, grad_head = b * stride_b + h * stride_h, b * stride_gb + h * stride_gh
    do_ptr, lse_ptr, delta_ptr = DO + b * stride_dob + h * stride_doh, LSE + bh * T, DELTA + bh * T
    offs_d = tl.arange(0, BLOCK_D)
    qk_scale = sm_scale * LOG2E

    if KEY_TILES:
        start_n = tl.program_id(0) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K + head, offs_n, offs_d, stride_t, stride_d, T, HEAD_DIM, True)
        v = _load_rows(V + head, offs_n, offs_d, stride_t, stride_d, T, HEAD_DIM, True)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        # the diagonal block: queries [start_n, start_n + BLOCK_N), masked
        diagonal_end = tl.minimum(start_n + BLOCK_N, T)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q + head, do_ptr, lse_ptr, delta_ptr, stride_t,
                             stride_d, stride_dot, stride_dod, start_n, offs_n, offs_d, bh,
                             start_n, diagonal_end, T, qk_scale, seed, threshold, keep_scale,
                             HEAD_DIM, BLOCK_M, BLOCK_N, True, DROPOUT, DOT_PRECISION)
        # queries below it see every key of this tile
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q + head, do_ptr, lse_ptr, delta_ptr, stride_t,
                             stride_d, stride_dot, stride_dod, start_n, offs_n, offs_d, bh,
                             diagonal_end, T, T, qk_scale, seed, threshold, keep_scale,
                             HEAD_DIM, BLOCK_M, BLOCK_N, False, DROPOUT, DOT_PRECISION)
        if DROPOUT:
            dv = dv * keep_scale
        _store_rows(DK + grad_head, dk * sm_scale, offs_n, offs_d, stride_gt, stride_gd, T,
                    HEAD_DIM)
        _store_rows(DV + grad_head, dv, offs_n, offs_d, stride_gt, stride_gd, T, HEAD_DIM)
    else:
        start_m = tl.program_id(0) * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q + head, offs_m, offs_d, stride_t, stride_d, T, HEAD_DIM, True)
        do = _load_rows(do_ptr, offs_m, offs_d, stride_dot, stride_dod, T, HEAD_DIM, True)
        lse = tl.load(lse_ptr + offs_m, mask=offs_m < T, other=0.0) * LOG2E
        delta = tl.load(delta_ptr + offs_m, mask=offs_m < T, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        # keys left of the diagonal block, then the diagonal block, masked
        dq = _dq_tiles(dq, q, do, lse, delta, K + head, V + head, stride_t, stride_d, offs_m,
                       offs_d, bh, 0, start_m, T, qk_scale, seed, threshold, keep_scale,
                       HEAD_DIM, BLOCK_N, False, DROPOUT, DOT_PRECISION)
        dq = _dq_tiles(dq, q, do, lse, delta, K + head, V + head, stride_t, stride_d, offs_m,
                       offs_d, bh, start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, seed,
                       threshold, keep_scale, HEAD_DIM, BLOCK_N, True, DROPOUT, DOT_PRECISION)
        _store_rows(DQ + grad_head, dq * sm_scale, offs_m, offs_d, stride_gt, stride_gd, T,
                    HEAD_DIM)


# The backward kernel tuned twice: by key tiles for dK/dV, by query tiles for dQ.
_dkdv_kernel = triton.autotune(configs=_COLUMN_TILES, key=_TUNE_KEY,
                               prune_configs_by=_PRUNE)(_backward_kernel)
_dq_kernel = triton.autotune(configs=_ROW_TILES, key=_TUNE_KEY, prune_configs_by=_PRUNE)(_backward_kernel)


# ---------------------------------------------------------------------------------------------
# The keep-mask itself (the op fastgpt::attention_keep_mask)
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed", "threshold"])
def _keep_mask_kernel(OUT, T, seed, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows [start_m, start_m + BLOCK_M) of head bh's (T, T) mask, as bytes."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _keep(seed, bh, offs_m, start_n, threshold, BLOCK_N)
        tl.store(OUT + (bh * T + offs_m[:, None]) * T + offs_n[None, :], keep.to(tl.uint8),
                 mask=(offs_m[:, None] < T) & (offs_n[None, :] < T))


# ---------------------------------------------------------------------------------------------
# Launchers (the signatures of the ops fastgpt::causal_attention and its backward)
# ---------------------------------------------------------------------------------------------


def _dropout_args(dropout_p: float, seed: torch.Tensor) -> dict:
    return dict(seed=int(seed), threshold=dropout_threshold(dropout_p),
                keep_scale=dropout_keep_scale(dropout_p), DROPOUT=dropout_p > 0)


def _shape_args(q: torch.Tensor) -> dict:
    B, H, T, D = q.shape
    return dict(H=H, T=T, T_BUCKET=triton.next_power_of_2(T), sm_scale=1.0 / math.sqrt(D),
                HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
                DOT_PRECISION="ieee" if q.dtype == torch.float32 else None)


def _grid(q: torch.Tensor, block: str):
    B, H, T, _ = q.shape
    return lambda meta: (triton.cdiv(T, meta[block]), B * H)


def _check(*tensors: torch.Tensor) -> None:
    q = tensors[0]
    assert q.dtype in SUPPORTED_DTYPES and q.shape[-1] <= MAX_HEAD_SIZE, (q.dtype, q.shape)
    assert all(t.shape == q.shape and t.dtype == q.dtype and t.device == q.device
               for t in tensors), "q, k, v (and dO, O) must share shape, dtype and device"


def _shared_strides(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors with one set of strides, as the kernels read q, k and v: as they are when they
    share it already (views of one packed tensor), else contiguous copies (as csrc/attention.cpp's
    readable_qkv)."""
    if all(t.stride() == tensors[0].stride() for t in tensors):
        return tensors
    return tuple(t.contiguous() for t in tensors)


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                            seed: torch.Tensor, out: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, T, D) in q's dtype, logsumexp (B, H, T) float32); `out` may be given, any strides."""
    _check(q, k, v)
    q, k, v = _shared_strides(q, k, v)
    B, H, T, D = q.shape
    out = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device) if out is None else out
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    _forward_kernel[_grid(q, "BLOCK_M")](q, k, v, out, lse, *q.stride(), *out.stride(),
                                         **_shape_args(q), **_dropout_args(dropout_p, seed))
    return out, lse


def flash_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             dropout_p: float, seed: torch.Tensor,
                             grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' dtype, recomputing the probabilities from q, k and lse; they
    are written into `grads` when given (with one set of strides: views of one packed gradient),
    else into new contiguous tensors, as the op's fake says."""
    _check(q, k, v, grad_out, out)
    assert lse.dtype == torch.float32 and lse.is_contiguous(), "lse comes from the forward"
    q, k, v = _shared_strides(q, k, v)
    if grads is None:
        grads = tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    dq, dk, dv = grads
    assert dq.stride() == dk.stride() == dv.stride(), "dq, dk, dv are written with one set of strides"
    delta = torch.empty_like(lse)
    shape, dropout = _shape_args(q), _dropout_args(dropout_p, seed)
    B, H, T, _ = q.shape
    _delta_kernel[(triton.cdiv(T, 64), B * H)](out, grad_out, delta, *out.stride(),
                                               *grad_out.stride(), H, T,
                                               HEAD_DIM=shape["HEAD_DIM"],
                                               BLOCK_D=shape["BLOCK_D"], BLOCK_M=64)
    args = (q, k, v, grad_out, lse, delta, dq, dk, dv, *q.stride(), *grad_out.stride(), *dq.stride())
    _dkdv_kernel[_grid(q, "BLOCK_N")](*args, **shape, **dropout, KEY_TILES=True)
    _dq_kernel[_grid(q, "BLOCK_M")](*args, **shape, **dropout, KEY_TILES=False)
    return dq, dk, dv


def flash_attention_forward_qkv(qkv: torch.Tensor, n_head: int, dropout_p: float,
                                seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed entry point (fastgpt::causal_attention_qkv): q, k, v read from qkv (B, T, 3C),
    out written as (B, T, C)."""
    B, T, C3 = qkv.shape
    out = torch.empty(B, T, C3 // 3, dtype=qkv.dtype, device=qkv.device)
    _, lse = flash_attention_forward(*split_heads(qkv, n_head), dropout_p, seed, out=heads(out, n_head))
    return out, lse


def flash_attention_backward_qkv(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor,
                                 lse: torch.Tensor, n_head: int, dropout_p: float,
                                 seed: torch.Tensor) -> torch.Tensor:
    """The gradient of the packed qkv (B, T, 3C), dq, dk, dv written into it in place."""
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    flash_attention_backward(heads(grad_out, n_head), *split_heads(qkv, n_head), heads(out, n_head), lse,
                             dropout_p, seed, grads=split_heads(dqkv, n_head))
    return dqkv


def keep_mask(seed: torch.Tensor, B: int, H: int, T: int, dropout_p: float) -> torch.Tensor:
    """fastgpt::attention_keep_mask: the bool (B, H, T, T) keep-mask the kernels use for this seed
    and shape, on the seed's device, made by a kernel that calls the same `_keep` as the attention
    kernels."""
    out = torch.empty(B, H, T, T, dtype=torch.uint8, device=seed.device)
    block_m, block_n = 16, 64
    _keep_mask_kernel[(triton.cdiv(T, block_m), B * H)](out, T, int(seed), dropout_threshold(dropout_p),
                                                       BLOCK_M=block_m, BLOCK_N=block_n)
    return out.view(torch.bool)
