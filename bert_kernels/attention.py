"""Flash attention in Triton: softmax(q k^T * scale, padded keys excluded) v, forward + backward.

    out = flash_attention(q, k, v, key_padding_mask, dropout_p, scale)    # q: (B, H, Tq, D), k, v: (B, H, Tk, D)

What it computes is exactly `bert_kernels.reference.attention`: per query row i of head (b, h),
    p_ij = exp(s_ij - max_j s_ij) / sum_j exp(...),  s_ij = scale * q_i . k_j   (keys j with mask[b, j] True)
    out_i = sum_j p_ij * z_ij / (1 - dropout_p) * v_j          (z_ij = 1 with probability 1 - dropout_p)
and a row whose keys are all padding gets out_i = 0 and zero gradients, never NaN.

Memory traffic, naive vs flash (BERT-base at T = 512: H = 12, D = 64). The naive path writes the
scores S = q k^T to memory, reads them for the softmax, writes P and reads P again for P v: 4
passes over B*H*T^2 elements, 8x the traffic of reading q, k, v and writing out (4*B*H*T*D) at
T = 512 and growing as T/D, and the backward keeps P, so memory grows as T^2 too. The flash
kernel never writes S or P: each program keeps one BLOCK_M block of queries in registers,
streams the key/value blocks of its head through on-chip memory, and keeps a running max m_i, a
running sum l_i and an fp32 accumulator, rescaling them when the max grows ("online softmax").
It reads q once, k and v once per query block (mostly from L2), writes out once, and saves only
the log-sum-exp per row, (B, H, Tq) fp32, for the backward, which recomputes P block by block
from q, k and that log-sum-exp instead of storing it.

How the key-padding mask enters: per key block, as a bias of 0 (real key) or -inf (padded key,
or a key index >= Tk past the end of the last block) added to the scores before the softmax.
Key blocks past the last real key of a sequence (right padding, as BERT batches have) are not
visited at all: the launcher passes, per batch row, the index one past its last real key. The
all-padding row: its running max stays -inf, so the kernel substitutes 0 for it before taking
exp (no -inf - -inf = NaN), ends with l_i = 0, writes 0, and saves a log-sum-exp of +inf so
that the backward's exp(s - lse) is 0 for every key of that row.

How dropout enters: z_ij is drawn inside the kernel with Triton's counter-based Philox RNG,
tl.rand(seed, offset) >= dropout_p with offset = ((b * H + h) * Tq + i) * Tk + j (int64), a
pure function of (seed, batch*head, query index, key index). Nothing is stored: the backward
draws the identical mask from the same seed and offsets. The normalizer l_i sums the
probabilities before dropout (dropout applies to the normalized probabilities). The seed is
drawn from torch's default CPU generator, so torch.manual_seed makes a run reproducible, and
bert_kernels/softmax.py uses the same offsets: masked_softmax(q k^T) and flash_attention drop the
same entries for the same seed (the tests use this).

Variable length (flash_attention_varlen, q, k, v of shape (total, H, D) with cu_seqlens): the same
three kernels with VARLEN on. Batch entry b is then sequence b, rows cu_seqlens[b]:cu_seqlens[b+1];
each program reads its sequence's start and length (_sequence), offsets its pointers by the start
row, and bounds its loads, stores and key loop by that length, so a query block or key block past
its sequence's end does nothing and no padding is computed. The grid is sized by max_seqlen; the
log-sum-exp and D buffers are (S * H, max_seqlen); Philox offsets use max_seqlen as the row length.

Limits (the launcher checks them and says which one failed): head dim D in {16, 32, 64, 128};
q, k, v all float16, bfloat16 or float32 on one CUDA device (or on the CPU under
TRITON_INTERPRET=1, slowly, without bfloat16); any Tq, Tk >= 1; B * H <= 65535 (the grid's
second axis); 0 <= dropout_p < 1. Accumulation is in fp32. For fp32 inputs the matmuls follow
torch.backends.cuda.matmul.allow_tf32 (ieee by default, like torch).
"""
import contextlib
import json
import math
import os

import torch
import triton
import triton.language as tl

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_BATCH_HEADS = 65535
LOG2E = 1.4426950408889634          # the kernels work in base 2: exp(x) = exp2(x * log2(e))
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"   # read at import, as @triton.jit does


# -------------------------------------------------------------------------------------------------
# Configs. The interpreter cannot autotune over several configs and pays ~10 ms per (program x
# block step), so it gets one config with 64-wide blocks. On the GPU the autotuner is offered,
# per case, only the candidates below that compile, fit in shared memory and do not spill
# registers there: bert_kernels/offered_configs.json, per kernel, target (sm_80 for compute
# capability 8.x, sm_90 for 9.x), precision, head dim and dropout, written by
# `python -m bert_kernels.aot --write-offered` from compiling every candidate ahead of time (see
# bert_kernels/aot.py). The tuning key is the sequence length rounded up to a power of 2, the head dim
# and the switches that change the compiled code (the autotuner adds the dtypes itself).
# BERT_KERNELS_MAX_CONFIGS=n (read at import) keeps the first n offered configs only: a quick compiled
# test run (gpu_check.py's tests part uses 1) compiles one config per kernel and case, not all.
# -------------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages). dK/dV: one program per key block (BLOCK_N) keeps
# k, v, dk, dv in registers and walks the query blocks (BLOCK_M); dQ: one program per query block
# walks the key blocks.
GPU_CONFIGS = {
    "_attn_fwd": ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 4),
                  (64, 64, 4, 3), (64, 64, 4, 2), (128, 32, 4, 3), (64, 32, 4, 2), (32, 32, 4, 2)),
    "_attn_bwd_dkdv": ((64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 2),
                       (64, 64, 4, 3), (32, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2), (32, 32, 4, 2)),
    "_attn_bwd_dq": ((128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 2),
                     (64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2)),
}
_INTERPRET_CONFIG = (64, 64, 4, 1)
_TUNE_KEY = ["T_BUCKET", "HEAD_DIM", "DROPOUT", "HAS_MASK", "VARLEN", "DOT_PRECISION"]
_OFFERED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "offered_configs.json")


def config_name(block_m, block_n, num_warps, num_stages):
    return f"{block_m}x{block_n}w{num_warps}s{num_stages}"


def case_name(precision, head_dim, dropout):
    """The key of a case in offered_configs.json, e.g. "bf16/d64/dropout"."""
    return f"{precision}/d{head_dim}/{'dropout' if dropout else 'no-dropout'}"


def precision_name(dtype, dot_precision):
    """fp16, bf16; fp32 operands: fp32 (ieee matmuls, torch's default) or tf32."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "tf32" if dot_precision == "tf32" else "fp32")


def _load_offered(path=_OFFERED_PATH):
    """{kernel: {target: {case: [config names]}}}; {} (no pruning) when the file is absent."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)["offered"]


_OFFERED = _load_offered()
_MAX_CONFIGS = int(os.environ.get("BERT_KERNELS_MAX_CONFIGS", "0") or 0) or None


def _table_target(device):
    """The compiled target whose table applies on this device; None (offer everything) if none does."""
    major, _ = torch.cuda.get_device_capability(device)
    return {8: "sm_80", 9: "sm_90"}.get(major)


def _offered_only(kernel):
    """The autotuner's early_config_prune hook for `kernel`: the configs offered_configs.json lists for
    this case; all of them where the table has no entry (another GPU, a case not compiled)."""
    def prune(configs, nargs, **kwargs):
        q = nargs["Q"]
        target = _table_target(q.device) if q.is_cuda else None
        case = case_name(precision_name(q.dtype, kwargs["DOT_PRECISION"]), kwargs["HEAD_DIM"], kwargs["DROPOUT"])
        names = _OFFERED.get(kernel, {}).get(target, {}).get(case, ())
        kept = [c for c in configs if config_name(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                                  c.num_stages) in names]
        return (kept or configs)[:_MAX_CONFIGS]
    return prune


def _configs(kernel):
    """@triton.autotune's arguments for `kernel`: one config under the interpreter, else every
    candidate of GPU_CONFIGS, pruned per case to those offered_configs.json offers."""
    if _INTERPRET:
        m, n, w, s = _INTERPRET_CONFIG
        return dict(configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)], key=_TUNE_KEY)
    return dict(configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                         for m, n, w, s in GPU_CONFIGS[kernel]],
                key=_TUNE_KEY, prune_configs_by={"early_config_prune": _offered_only(kernel)})


# EVEN_M / EVEN_N: the sequence length is a multiple of the block, so loads and stores skip
# their boundary masks. KEY_BIAS: some keys must be excluded (padding, or the ragged end).
_HEURISTICS = {
    "EVEN_M": lambda a: not a["VARLEN"] and a["T_Q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: not a["VARLEN"] and a["T_K"] % a["BLOCK_N"] == 0,
    "KEY_BIAS": lambda a: a["HAS_MASK"] or a["VARLEN"] or a["T_K"] % a["BLOCK_N"] != 0,
}


# -------------------------------------------------------------------------------------------------
# Pieces shared by the three kernels
# -------------------------------------------------------------------------------------------------
@triton.jit
def _key_bias(KEEP_ROW, offs_n, T_K, HAS_MASK: tl.constexpr):
    """(BLOCK_N,) fp32: 0 for a real key, -inf for a padded key or one past the end."""
    if HAS_MASK:
        real = tl.load(KEEP_ROW + offs_n, mask=offs_n < T_K, other=0) != 0
    else:
        real = offs_n < T_K
    return tl.where(real, 0.0, float("-inf"))


@triton.jit
def _sequence(CU_SEQLENS, b, T_Q, T_K, VARLEN: tl.constexpr):
    """(first row, query length, key length) of batch entry b. Padded layout: row 0, T_Q, T_K.
    Variable length: sequence b is rows cu_seqlens[b]:cu_seqlens[b+1] of the (total, H, D) tensors."""
    if VARLEN:
        row0 = tl.load(CU_SEQLENS + b).to(tl.int64)
        len_q = (tl.load(CU_SEQLENS + b + 1) - row0).to(tl.int32)
        len_k = len_q
    else:
        row0 = 0
        len_q = T_Q
        len_k = T_K
    return row0, len_q, len_k


@triton.jit
def _dropout_keep(seed, dropout_p, rng_offsets):
    """True where an attention probability survives dropout; same (seed, offsets) -> same mask."""
    return tl.rand(seed, rng_offsets) >= dropout_p


@triton.jit
def _load_rows(ptrs, offs, T, EVEN: tl.constexpr):
    """Load a (BLOCK, D) tile of rows; rows >= T read as 0 unless T is a multiple of BLOCK."""
    if EVEN:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=(offs < T)[:, None], other=0.0)
    return x


@triton.jit
def _store_rows(ptrs, x, offs, T, EVEN: tl.constexpr):
    if EVEN:
        tl.store(ptrs, x)
    else:
        tl.store(ptrs, x, mask=(offs < T)[:, None])


# -------------------------------------------------------------------------------------------------
# Forward: one program per (query block, batch*head)
# -------------------------------------------------------------------------------------------------
@triton.autotune(**_configs("_attn_fwd"))
@triton.heuristics(_HEURISTICS)
@triton.jit(do_not_specialize=["seed"])
def _attn_fwd(Q, K, V, O, LSE, KEEP, KEY_END, CU_SEQLENS,
              stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
              stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
              H, T_Q, T_K, T_BUCKET, qk_scale, seed, dropout_p,
              HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
              DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, KEY_BIAS: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row0, len_q, len_k = _sequence(CU_SEQLENS, b, T_Q, T_K, VARLEN)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    Q += b * stride_qb + h * stride_qh + row0 * stride_qt
    K += b * stride_kb + h * stride_kh + row0 * stride_kt
    V += b * stride_vb + h * stride_vh + row0 * stride_vt
    O += b * stride_ob + h * stride_oh + row0 * stride_ot

    q = _load_rows(Q + offs_m[:, None] * stride_qt + offs_d[None, :], offs_m, len_q, EVEN_M)   # (M, D)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)     # running max of the scores (base 2)
    l_i = tl.zeros((BLOCK_M,), tl.float32)                   # running sum of exp2(s - m_i)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)          # running sum of p * z * v
    if HAS_MASK:
        key_end = tl.load(KEY_END + b)                       # one past the last real key of row b
    else:
        key_end = len_k
    if VARLEN:                                               # a block past its sequence's end: no work
        key_end = tl.where(tl.program_id(0) * BLOCK_M < len_q, key_end, 0)
    if DROPOUT:
        rng_row = ((bh * T_Q + offs_m).to(tl.int64) * T_K)   # (M,) first Philox offset of each row

    for start_n in range(0, key_end, BLOCK_N):
        offs_kn = start_n + offs_n
        k = _load_rows(K + offs_kn[:, None] * stride_kt + offs_d[None, :], offs_kn, len_k, EVEN_N)  # (N, D)
        v = _load_rows(V + offs_kn[:, None] * stride_vt + offs_d[None, :], offs_kn, len_k, EVEN_N)  # (N, D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale   # (M, N), base-2 logits
        if KEY_BIAS:
            s += _key_bias(KEEP + b * T_K, offs_kn, len_k, HAS_MASK)[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # every key so far padded: no NaN
        alpha = tl.math.exp2(m_i - m_use)                    # rescales what was summed so far
        p = tl.math.exp2(s - m_use[:, None])                 # (M, N)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(_dropout_keep(seed, dropout_p, rng_row[:, None] + offs_kn[None, :]), p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_key = l_i > 0.0                                      # False: all keys padding
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    # log-sum-exp in base 2; +inf for an all-padding row so the backward's exp2(s - lse) is 0
    lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
    _store_rows(O + offs_m[:, None] * stride_ot + offs_d[None, :], out.to(O.dtype.element_ty),
                offs_m, len_q, EVEN_M)
    if EVEN_M:
        tl.store(LSE + bh * T_Q + offs_m, lse)
    else:
        tl.store(LSE + bh * T_Q + offs_m, lse, mask=offs_m < len_q)


# -------------------------------------------------------------------------------------------------
# Backward. With P = exp(S - lse), Pd = P * Z / (1 - p) (dropout), O = Pd V:
#   dV = Pd^T dO,  dPd = dO V^T,  dP = dPd * Z / (1 - p),  dS = P * (dP - D),  D_i = rowsum(dO_i * O_i)
#   dQ = scale * dS K,  dK = scale * dS^T Q
# (D_i = sum_j P_ij dP_ij = rowsum(dO * O) holds with dropout too.)
#
# dQ strategy: a separate kernel, one program per query block looping over the key blocks, rather
# than tl.atomic_add of dS K into an fp32 buffer from the dK/dV programs. It recomputes S and dPd
# (7 block matmuls per (query, key) block pair instead of 5) but is deterministic -- the same seed
# gives bit-identical gradients -- needs no zeroed fp32 buffer and no contended atomics (which also
# make the autotuner's repeated launches unsafe without a reset hook). It runs FIRST and also
# computes D_i for its rows (no separate preprocessing pass); the dK/dV kernel then reads D.
# -------------------------------------------------------------------------------------------------
@triton.autotune(**_configs("_attn_bwd_dq"))
@triton.heuristics(_HEURISTICS)
@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq(Q, K, V, O, DO, DQ, LSE, DELTA, KEEP, KEY_END, CU_SEQLENS,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                 stride_dob, stride_doh, stride_dot, stride_dqb, stride_dqh, stride_dqt,
                 H, T_Q, T_K, T_BUCKET, qk_scale, scale, seed, dropout_p,
                 HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, KEY_BIAS: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row0, len_q, len_k = _sequence(CU_SEQLENS, b, T_Q, T_K, VARLEN)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    K += b * stride_kb + h * stride_kh + row0 * stride_kt
    V += b * stride_vb + h * stride_vh + row0 * stride_vt
    rows_q = row0 + offs_m[:, None]
    q = _load_rows(Q + b * stride_qb + h * stride_qh + rows_q * stride_qt + offs_d[None, :], offs_m, len_q, EVEN_M)
    o = _load_rows(O + b * stride_ob + h * stride_oh + rows_q * stride_ot + offs_d[None, :], offs_m, len_q, EVEN_M)
    do = _load_rows(DO + b * stride_dob + h * stride_doh + rows_q * stride_dot + offs_d[None, :],
                    offs_m, len_q, EVEN_M)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)            # (M,) D_i = rowsum(dO * O)
    if EVEN_M:
        lse = tl.load(LSE + bh * T_Q + offs_m)
        tl.store(DELTA + bh * T_Q + offs_m, delta)
    else:
        lse = tl.load(LSE + bh * T_Q + offs_m, mask=offs_m < len_q, other=float("inf"))
        tl.store(DELTA + bh * T_Q + offs_m, delta, mask=offs_m < len_q)
    if HAS_MASK:
        key_end = tl.load(KEY_END + b)
    else:
        key_end = len_k
    if VARLEN:
        key_end = tl.where(tl.program_id(0) * BLOCK_M < len_q, key_end, 0)
    if DROPOUT:
        rng_row = ((bh * T_Q + offs_m).to(tl.int64) * T_K)
        inv_keep = 1.0 / (1.0 - dropout_p)

    dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    for start_n in range(0, key_end, BLOCK_N):
        offs_kn = start_n + offs_n
        k = _load_rows(K + offs_kn[:, None] * stride_kt + offs_d[None, :], offs_kn, len_k, EVEN_N)
        v = _load_rows(V + offs_kn[:, None] * stride_vt + offs_d[None, :], offs_kn, len_k, EVEN_N)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale      # (M, N)
        if KEY_BIAS:
            s += _key_bias(KEEP + b * T_K, offs_kn, len_k, HAS_MASK)[None, :]
        p = tl.math.exp2(s - lse[:, None])                                        # (M, N)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)               # (M, N)
        if DROPOUT:
            dp = tl.where(_dropout_keep(seed, dropout_p, rng_row[:, None] + offs_kn[None, :]), dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq *= scale
    _store_rows(DQ + b * stride_dqb + h * stride_dqh + rows_q * stride_dqt + offs_d[None, :],
                dq.to(DQ.dtype.element_ty), offs_m, len_q, EVEN_M)


@triton.autotune(**_configs("_attn_bwd_dkdv"))
@triton.heuristics(_HEURISTICS)
@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KEEP, KEY_END, CU_SEQLENS,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                   stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                   stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                   H, T_Q, T_K, T_BUCKET, qk_scale, scale, seed, dropout_p,
                   HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, KEY_BIAS: tl.constexpr):
    # Works on the transposed block S^T (keys x queries), so P^T and dS^T come out of tl.dot in
    # the layout the next tl.dot wants (dV += P^T dO, dK += dS^T Q) without a transpose of P.
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row0, len_q, len_k = _sequence(CU_SEQLENS, b, T_Q, T_K, VARLEN)
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    Q += b * stride_qb + h * stride_qh + row0 * stride_qt
    DO += b * stride_dob + h * stride_doh + row0 * stride_dot
    rows_k = row0 + offs_n[:, None]
    k = _load_rows(K + b * stride_kb + h * stride_kh + rows_k * stride_kt + offs_d[None, :], offs_n, len_k, EVEN_N)
    v = _load_rows(V + b * stride_vb + h * stride_vh + rows_k * stride_vt + offs_d[None, :], offs_n, len_k, EVEN_N)
    if KEY_BIAS:
        bias = _key_bias(KEEP + b * T_K, offs_n, len_k, HAS_MASK)           # (N,), the same every step
    if HAS_MASK:
        m_end = tl.where(start_n < tl.load(KEY_END + b), T_Q, 0)   # keys past the last real key: dK = dV = 0
    else:
        m_end = tl.where(start_n < len_k, len_q, 0)               # varlen: a key block past the sequence's end
    if DROPOUT:
        inv_keep = 1.0 / (1.0 - dropout_p)

    dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    for start_m in range(0, m_end, BLOCK_M):
        offs_qm = start_m + offs_m
        q = _load_rows(Q + offs_qm[:, None] * stride_qt + offs_d[None, :], offs_qm, len_q, EVEN_M)    # (M, D)
        do = _load_rows(DO + offs_qm[:, None] * stride_dot + offs_d[None, :], offs_qm, len_q, EVEN_M) # (M, D)
        if EVEN_M:
            lse = tl.load(LSE + bh * T_Q + offs_qm)
            delta = tl.load(DELTA + bh * T_Q + offs_qm)
        else:
            lse = tl.load(LSE + bh * T_Q + offs_qm, mask=offs_qm < len_q, other=float("inf"))
            delta = tl.load(DELTA + bh * T_Q + offs_qm, mask=offs_qm < len_q, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale    # (N, M)
        if KEY_BIAS:
            s_t += bias[:, None]
        p_t = tl.math.exp2(s_t - lse[None, :])                                    # (N, M)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)             # (N, M)
        if DROPOUT:
            rng = (bh * T_Q + offs_qm).to(tl.int64)[None, :] * T_K + offs_n[:, None]
            keep = _dropout_keep(seed, dropout_p, rng)
            pd_t = tl.where(keep, p_t * inv_keep, 0.0)
            dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
        else:
            pd_t = p_t
        dv += tl.dot(pd_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    dk *= scale
    _store_rows(DK + b * stride_dkb + h * stride_dkh + rows_k * stride_dkt + offs_d[None, :],
                dk.to(DK.dtype.element_ty), offs_n, len_k, EVEN_N)
    _store_rows(DV + b * stride_dvb + h * stride_dvh + rows_k * stride_dvt + offs_d[None, :],
                dv.to(DV.dtype.element_ty), offs_n, len_k, EVEN_N)


# -------------------------------------------------------------------------------------------------
# Launchers: every shape / dtype / device check lives here
# -------------------------------------------------------------------------------------------------
def unsupported(q, k, v, key_padding_mask=None, dropout_p=0.0):
    """None if flash_attention takes this case, else a short reason naming the limit."""
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} is not one of float16, bfloat16, float32"
    if not (q.device == k.device == v.device):
        return f"q, k, v are on different devices ({q.device}, {k.device}, {v.device})"
    if q.device.type != "cuda" and not _INTERPRET:
        return f"tensors on {q.device} need CUDA (or TRITON_INTERPRET=1 set before importing bert_kernels)"
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return "bfloat16 is not supported by the Triton interpreter on the CPU"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k, v must be 4-d (B, H, T, D)"
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        return f"shapes do not agree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[3] not in HEAD_DIMS:
        return f"head dim {q.shape[3]} is not one of {', '.join(map(str, HEAD_DIMS))}"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"B * H = {q.shape[0] * q.shape[1]} is more than {MAX_BATCH_HEADS}"
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        return f"key_padding_mask must be (B, Tk) = {(k.shape[0], k.shape[2])}, got {tuple(key_padding_mask.shape)}"
    if not 0.0 <= dropout_p < 1.0:
        return f"dropout_p={dropout_p} is not in [0, 1)"
    return None


def _dot_precision(dtype):
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"       # the default; ignored for float16 / bfloat16 operands


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _device_guard(x):
    """Launch on x's GPU even when another one is current (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _mask_args(key_padding_mask, B, T_K, device):
    """(keep, key_end): the mask as uint8 (B, Tk) and, per batch row, one past its last real key."""
    if key_padding_mask is None:
        dummy = torch.empty(1, dtype=torch.int32, device=device)
        return dummy, dummy
    keep = key_padding_mask.to(device=device, dtype=torch.bool).to(torch.uint8).contiguous()   # (B, Tk)
    positions = torch.arange(1, T_K + 1, device=device, dtype=torch.int32)
    key_end = (keep.to(torch.int32) * positions).amax(dim=1).to(torch.int32).contiguous()     # (B,), 0 if none
    return keep, key_end


def _geometry(q, k, varlen):
    """(B, H, T_Q, T_K, D, strides): the padded (B, H, T, D) layout, or, with varlen = (cu_seqlens,
    max_seqlen), the (total, H, D) one: B = S sequences of at most max_seqlen rows, no batch stride."""
    if varlen is None:
        B, H, T_Q, D = q.shape
        return B, H, T_Q, k.shape[2], D, _strides
    cu_seqlens, max_seqlen = varlen
    return (cu_seqlens.numel() - 1, q.shape[1], max_seqlen, max_seqlen, q.shape[2],
            lambda x: (0, x.stride(1), x.stride(0)))


def _forward(q, k, v, keep, key_end, has_mask, dropout_p, scale, seed, varlen=None):
    B, H, T_Q, T_K, D, strides = _geometry(q, k, varlen)
    cu_seqlens = varlen[0] if varlen is not None else key_end          # a dummy when not varlen
    o = torch.empty_like(q)                                   # q's layout when q is dense (e.g. a transposed view)
    # varlen: the slots past a shorter sequence's end are never written; zero them so that the
    # output is a pure function of the inputs (what a custom op promises; opcheck compares them)
    lse = (torch.empty if varlen is None else torch.zeros)((B * H, T_Q), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(T_Q, meta["BLOCK_M"]), B * H)
    with _device_guard(q):
        _attn_fwd[grid](q, k, v, o, lse, keep, key_end, cu_seqlens,
                        *strides(q), *strides(k), *strides(v), *strides(o),
                        H, T_Q, T_K, triton.next_power_of_2(max(T_Q, T_K)), scale * LOG2E, seed, dropout_p,
                        HEAD_DIM=D, HAS_MASK=has_mask, VARLEN=varlen is not None, DROPOUT=dropout_p > 0.0,
                        DOT_PRECISION=_dot_precision(q.dtype))
    return o, lse


def _backward(do, q, k, v, o, lse, keep, key_end, has_mask, dropout_p, scale, seed, varlen=None):
    B, H, T_Q, T_K, D, strides = _geometry(q, k, varlen)
    cu_seqlens = varlen[0] if varlen is not None else key_end
    do = _last_dim_contiguous(do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)                             # (B*H, Tq) fp32, written by the dQ kernel
    common = dict(HEAD_DIM=D, HAS_MASK=has_mask, VARLEN=varlen is not None, DROPOUT=dropout_p > 0.0,
                  DOT_PRECISION=_dot_precision(q.dtype))
    t_bucket = triton.next_power_of_2(max(T_Q, T_K))
    with _device_guard(q):
        _attn_bwd_dq[lambda meta: (triton.cdiv(T_Q, meta["BLOCK_M"]), B * H)](
            q, k, v, o, do, dq, lse, delta, keep, key_end, cu_seqlens,
            *strides(q), *strides(k), *strides(v), *strides(o), *strides(do), *strides(dq),
            H, T_Q, T_K, t_bucket, scale * LOG2E, scale, seed, dropout_p, **common)
        _attn_bwd_dkdv[lambda meta: (triton.cdiv(T_K, meta["BLOCK_N"]), B * H)](
            q, k, v, do, dk, dv, lse, delta, keep, key_end, cu_seqlens,
            *strides(q), *strides(k), *strides(v), *strides(do), *strides(dk), *strides(dv),
            H, T_Q, T_K, t_bucket, scale * LOG2E, scale, seed, dropout_p, **common)
    return dq, dk, dv


# -------------------------------------------------------------------------------------------------
# Custom ops: what autograd and torch.compile see. Each launcher is one opaque operator
# (torch.library.custom_op) with a fake implementation that gives the output shapes, strides and
# dtypes without running anything, and a backward registered as another operator, so a compiled
# model holds one node per attention call: no graph break, no tracing into Triton. Every argument
# that changes the result is an input, the dropout seed included (a (1,) int64 CPU tensor, read
# with .item() inside the operator only), so the operators are pure functions of their inputs.
# -------------------------------------------------------------------------------------------------
def _no_seed():
    return torch.zeros(1, dtype=torch.int64)


def _draw_seed():
    """A (1,) int64 Philox seed from torch's default CPU generator: torch.manual_seed makes dropout
    reproducible. A tensor, not an int: under torch.compile the draw stays in the graph."""
    return torch.randint(0, 2**31 - 1, (1,))


@torch.library.custom_op("bertfamily::flash_attention_fwd", mutates_args=())
def _flash_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, key_end: torch.Tensor,
                  has_mask: bool, dropout_p: float, scale: float, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Tq, D) in q's layout, lse (B*H, Tq) fp32)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return _forward(q, k, v, keep, key_end, has_mask, dropout_p, scale, int(seed.item()))


@_flash_fwd_op.register_fake
def _(q, k, v, keep, key_end, has_mask, dropout_p, scale, seed):
    B, H, T_Q, _ = q.shape
    return torch.empty_like(_last_dim_contiguous(q)), q.new_empty((B * H, T_Q), dtype=torch.float32)


@torch.library.custom_op("bertfamily::flash_attention_bwd", mutates_args=())
def _flash_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, keep: torch.Tensor, key_end: torch.Tensor, has_mask: bool, dropout_p: float,
                  scale: float, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return _backward(do, q, k, v, o, lse, keep, key_end, has_mask, dropout_p, scale, int(seed.item()))


@_flash_bwd_op.register_fake
def _(do, q, k, v, o, lse, keep, key_end, has_mask, dropout_p, scale, seed):
    return tuple(torch.empty_like(_last_dim_contiguous(x)) for x in (q, k, v))


def _flash_setup(ctx, inputs, output):
    q, k, v, keep, key_end, has_mask, dropout_p, scale, seed = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, keep, key_end, seed)
    ctx.args = (has_mask, dropout_p, scale)


def _flash_grad(ctx, do, _dlse):
    q, k, v, o, lse, keep, key_end, seed = ctx.saved_tensors
    dq, dk, dv = _flash_bwd_op(do, q, k, v, o, lse, keep, key_end, *ctx.args, seed)
    return dq, dk, dv, None, None, None, None, None, None


_flash_fwd_op.register_autograd(_flash_grad, setup_context=_flash_setup)


@torch.library.custom_op("bertfamily::flash_attention_varlen_fwd", mutates_args=())
def _varlen_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   dropout_p: float, scale: float, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (total, H, D) in q's layout, lse (S*H, max_seqlen) fp32); cu_seqlens (S+1,) int32."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    return _forward(q, k, v, dummy, dummy, False, dropout_p, scale, int(seed.item()), (cu_seqlens, max_seqlen))


@_varlen_fwd_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed):
    S = cu_seqlens.shape[0] - 1
    return torch.empty_like(_last_dim_contiguous(q)), q.new_empty((S * q.shape[1], max_seqlen), dtype=torch.float32)


@torch.library.custom_op("bertfamily::flash_attention_varlen_bwd", mutates_args=())
def _varlen_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, dropout_p: float, scale: float,
                   seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    return _backward(do, q, k, v, o, lse, dummy, dummy, False, dropout_p, scale, int(seed.item()),
                     (cu_seqlens, max_seqlen))


@_varlen_bwd_op.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, max_seqlen, dropout_p, scale, seed):
    return tuple(torch.empty_like(_last_dim_contiguous(x)) for x in (q, k, v))


def _varlen_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, seed)
    ctx.args = (max_seqlen, dropout_p, scale)


def _varlen_grad(ctx, do, _dlse):
    q, k, v, o, lse, cu_seqlens, seed = ctx.saved_tensors
    dq, dk, dv = _varlen_bwd_op(do, q, k, v, o, lse, cu_seqlens, *ctx.args, seed)
    return dq, dk, dv, None, None, None, None, None


_varlen_fwd_op.register_autograd(_varlen_grad, setup_context=_varlen_setup)


def unsupported_varlen(q, k, v, cu_seqlens, dropout_p=0.0):
    """None if flash_attention_varlen takes this case, else a short reason naming the limit."""
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        return f"q, k, v must all be (total, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    reason = unsupported(q[None].transpose(1, 2), k[None].transpose(1, 2), v[None].transpose(1, 2), None, dropout_p)
    if reason is not None:
        return reason
    if cu_seqlens.device != q.device:
        return f"cu_seqlens is on {cu_seqlens.device}, q on {q.device}"
    if (cu_seqlens.numel() - 1) * q.shape[1] > MAX_BATCH_HEADS:
        return f"sequences * H = {(cu_seqlens.numel() - 1) * q.shape[1]} is more than {MAX_BATCH_HEADS}"
    return None


def flash_attention_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, scale=None):
    """Attention within each sequence of a (total, H, D) layout; the kernels above with VARLEN on.

    q, k, v: (total, H, D) with a contiguous last dim; cu_seqlens: (S+1,) int32 offsets of the S
    sequences (0 first, total last); max_seqlen: the longest. One program per (query block,
    sequence * head) reads its sequence's rows from cu_seqlens: nothing is padded or computed
    past a sequence's end. Dropout offsets are ((s * H + h) * max_seqlen + i) * max_seqlen + j.
    """
    reason = unsupported_varlen(q, k, v, cu_seqlens, dropout_p)
    if reason is not None:
        raise ValueError(f"flash_attention_varlen cannot take this input: {reason}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.shape[0] == 0:
        return q.clone()                                                           # no token: nothing to launch
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    seed = _draw_seed() if dropout_p > 0.0 else _no_seed()
    return _varlen_fwd_op(q, k, v, cu_seqlens, int(max_seqlen), float(dropout_p), scale, seed)[0]


def flash_attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None):
    """softmax(q k^T * scale, padded keys excluded), dropout, times v. (B, H, Tq, D) in q's dtype.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D), any strides; key_padding_mask: (B, Tk) bool or 0/1,
    True = real key, or None; scale defaults to 1/sqrt(D). Differentiable w.r.t. q, k, v.
    """
    reason = unsupported(q, k, v, key_padding_mask, dropout_p)
    if reason is not None:
        raise ValueError(f"flash_attention cannot take this input: {reason}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.shape[2] == 0 or k.shape[2] == 0:
        return (q.float() @ k.float().transpose(-2, -1) @ v.float()).to(q.dtype)   # empty: let torch do it
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    keep, key_end = _mask_args(key_padding_mask, q.shape[0], k.shape[2], q.device)
    seed = _draw_seed() if dropout_p > 0.0 else _no_seed()
    return _flash_fwd_op(q, k, v, keep, key_end, key_padding_mask is not None, float(dropout_p), scale, seed)[0]
