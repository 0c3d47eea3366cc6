"""Fused scale + key-padding mask + softmax (+ dropout) in Triton, forward + backward.

    probs = masked_softmax(scores, key_padding_mask, scale, dropout_p)   # scores: (B, H, Tq, Tk)

What it computes is exactly `bert_kernels.reference.masked_softmax`: softmax over the last dim of
scale * scores with padded keys (key_padding_mask[b, j] False) at probability exactly 0, then
dropout (zero with probability dropout_p, survivors times 1 / (1 - dropout_p)). A row whose keys
are all padding is all zeros with zero gradient, never NaN. Computed in fp32, returned in the
dtype of `scores`.

Memory traffic: eager PyTorch does scale (read + write), masked_fill (read + write), softmax
(read + write) and dropout (read + write, plus its mask): 8+ passes over the (B, H, Tq, Tk)
scores. Here each program takes a few whole rows into registers (BLOCK = next power of 2 >= Tk)
and does it all at once: the scores are read once and the probabilities written once. Padded
keys are not even read. The backward, dS = scale * P * (dP - rowsum(dP * P)), reads dY and one
saved tensor and writes dS once.

Dropout uses Triton's counter-based Philox RNG, tl.rand(seed, offset) with offset =
row * Tk + j, row = (b * H + h) * Tq + i: the same offsets as bert_kernels/attention.py, so for the
same seed masked_softmax(q k^T) and flash_attention drop the same entries. Nothing is stored:
the backward regenerates the mask. Without dropout the backward reads the saved output P; with
dropout the output has lost P where it dropped, so the backward keeps the input scores instead
(alive anyway, no extra write) and recomputes P from them in registers.

Limits (checked by the launcher): Tk <= 16384 (a row must fit in registers); float16, bfloat16
or float32 scores on a CUDA device (or the CPU under TRITON_INTERPRET=1, no bfloat16 there);
0 <= dropout_p < 1.
"""
import contextlib
import os

import torch
import triton
import triton.language as tl

MAX_TK = 16384
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _masked_probs(X, stride_x, KEEP, rows, cols, R, ROWS_PER_BATCH, T_K, scale_log2e,
                  HAS_MASK: tl.constexpr):
    """(ROWS, BLOCK) fp32 probabilities of `rows`; 0 on padded keys, columns >= Tk and all-padding rows."""
    ok = (rows < R)[:, None] & (cols < T_K)[None, :]
    if HAS_MASK:
        b = rows // ROWS_PER_BATCH                                       # batch row of each score row
        ok = ok & (tl.load(KEEP + b[:, None] * T_K + cols[None, :], mask=ok, other=0) != 0)
    x = tl.load(X + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=ok, other=0.0)
    s = tl.where(ok, x.to(tl.float32) * scale_log2e, float("-inf"))     # base-2 logits
    m = tl.max(s, 1)
    m = tl.where(m == float("-inf"), 0.0, m)                           # all-padding row: no -inf - -inf
    e = tl.math.exp2(s - m[:, None])
    l = tl.sum(e, 1)
    return e / tl.where(l > 0.0, l, 1.0)[:, None]


@triton.jit
def _dropout_keep(seed, dropout_p, rows, cols, T_K):
    return tl.rand(seed, rows.to(tl.int64)[:, None] * T_K + cols[None, :]) >= dropout_p


@triton.jit(do_not_specialize=["seed"])
def _softmax_fwd(X, Y, KEEP, R, ROWS_PER_BATCH, T_K, stride_x, stride_y, scale_log2e, seed, dropout_p,
                 HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    p = _masked_probs(X, stride_x, KEEP, rows, cols, R, ROWS_PER_BATCH, T_K, scale_log2e, HAS_MASK)
    if DROPOUT:
        p = tl.where(_dropout_keep(seed, dropout_p, rows, cols, T_K), p * (1.0 / (1.0 - dropout_p)), 0.0)
    in_bounds = (rows < R)[:, None] & (cols < T_K)[None, :]
    tl.store(Y + rows.to(tl.int64)[:, None] * stride_y + cols[None, :], p.to(Y.dtype.element_ty), mask=in_bounds)


@triton.jit(do_not_specialize=["seed"])
def _softmax_bwd(DY, SAVED, DX, KEEP, R, ROWS_PER_BATCH, T_K, stride_dy, stride_saved, stride_dx,
                 scale, scale_log2e, seed, dropout_p,
                 HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # SAVED is the output P without dropout, the input scores with dropout (P recomputed here)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    in_bounds = (rows < R)[:, None] & (cols < T_K)[None, :]
    row_offs = rows.to(tl.int64)[:, None]
    dy = tl.load(DY + row_offs * stride_dy + cols[None, :], mask=in_bounds, other=0.0).to(tl.float32)
    if DROPOUT:
        p = _masked_probs(SAVED, stride_saved, KEEP, rows, cols, R, ROWS_PER_BATCH, T_K, scale_log2e, HAS_MASK)
        dp = tl.where(_dropout_keep(seed, dropout_p, rows, cols, T_K), dy * (1.0 / (1.0 - dropout_p)), 0.0)
    else:
        p = tl.load(SAVED + row_offs * stride_saved + cols[None, :], mask=in_bounds, other=0.0).to(tl.float32)
        dp = dy
    delta = tl.sum(p * dp, 1)                                             # (ROWS,)
    ds = p * (dp - delta[:, None]) * scale
    tl.store(DX + row_offs * stride_dx + cols[None, :], ds.to(DX.dtype.element_ty), mask=in_bounds)


# -------------------------------------------------------------------------------------------------
# Launchers
# -------------------------------------------------------------------------------------------------
def unsupported(scores, key_padding_mask=None, dropout_p=0.0):
    """None if masked_softmax takes this case, else a short reason naming the limit."""
    if scores.dtype not in DTYPES:
        return f"dtype {scores.dtype} is not one of float16, bfloat16, float32"
    if scores.device.type != "cuda" and not _INTERPRET:
        return f"tensors on {scores.device} need CUDA (or TRITON_INTERPRET=1 set before importing bert_kernels)"
    if scores.device.type == "cpu" and scores.dtype == torch.bfloat16:
        return "bfloat16 is not supported by the Triton interpreter on the CPU"
    if scores.dim() != 4:
        return "scores must be 4-d (B, H, Tq, Tk)"
    if scores.shape[-1] > MAX_TK:
        return f"Tk = {scores.shape[-1]} is more than {MAX_TK} (a row must fit in registers)"
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (scores.shape[0], scores.shape[-1]):
        return (f"key_padding_mask must be (B, Tk) = {(scores.shape[0], scores.shape[-1])}, "
                f"got {tuple(key_padding_mask.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        return f"dropout_p={dropout_p} is not in [0, 1)"
    return None


def _draw_seed():
    """A Philox seed from torch's default CPU generator (the same draw as bert_kernels/attention.py)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def _launch_config(T_K):
    """(ROWS, BLOCK, num_warps): whole rows of BLOCK >= Tk, ~4096 elements per program. Compiled ahead
    of time (bert_kernels/aot.py): a row of 8192 spills registers with 16 warps (fp32, mask and dropout, sm_80)
    and not with 32; one of 16384 spills with either, least with 16 (docs/aot_report.md)."""
    block = triton.next_power_of_2(T_K)
    rows = max(1, min(16, 4096 // block))
    num_warps = 32 if block == 8192 else min(16, max(4, rows * block // 512))
    return rows, block, num_warps


def _rows_view(x):
    """(B, H, Tq, Tk) -> (B*H*Tq, Tk), a view when the strides allow, with unit column stride."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def _device_guard(x):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class MaskedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, keep, has_mask, scale, dropout_p, seed):
        B, H, T_Q, T_K = scores.shape
        x = _rows_view(scores)                                            # (R, Tk)
        y = torch.empty(x.shape, device=x.device, dtype=scores.dtype)    # (R, Tk)
        rows, block, num_warps = _launch_config(T_K)
        with _device_guard(x):
            _softmax_fwd[(triton.cdiv(x.shape[0], rows),)](
                x, y, keep, x.shape[0], H * T_Q, T_K, x.stride(0), y.stride(0), scale * LOG2E, seed, dropout_p,
                HAS_MASK=has_mask, DROPOUT=dropout_p > 0.0, ROWS=rows, BLOCK=block, num_warps=num_warps)
        ctx.save_for_backward(x if dropout_p > 0.0 else y, keep)
        ctx.args = (scores.shape, has_mask, scale, dropout_p, seed)
        return y.view(B, H, T_Q, T_K)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        saved, keep = ctx.saved_tensors
        shape, has_mask, scale, dropout_p, seed = ctx.args
        dy = _rows_view(dy)
        dx = torch.empty(dy.shape, device=dy.device, dtype=saved.dtype)
        rows, block, num_warps = _launch_config(shape[-1])
        with _device_guard(dy):
            _softmax_bwd[(triton.cdiv(dy.shape[0], rows),)](
                dy, saved, dx, keep, dy.shape[0], shape[1] * shape[2], shape[3],
                dy.stride(0), saved.stride(0), dx.stride(0), scale, scale * LOG2E, seed, dropout_p,
                HAS_MASK=has_mask, DROPOUT=dropout_p > 0.0, ROWS=rows, BLOCK=block, num_warps=num_warps)
        return dx.view(shape), None, None, None, None, None


def masked_softmax(scores, key_padding_mask=None, scale=1.0, dropout_p=0.0):
    """softmax(scale * scores) over the last dim, padded keys at 0, then dropout. Same dtype as scores.

    scores: (B, H, Tq, Tk), any strides; key_padding_mask: (B, Tk) bool or 0/1, True = real key,
    or None. Differentiable w.r.t. scores.
    """
    reason = unsupported(scores, key_padding_mask, dropout_p)
    if reason is not None:
        raise ValueError(f"masked_softmax cannot take this input: {reason}")
    if scores.numel() == 0:
        return scores.float().softmax(-1).to(scores.dtype)
    if key_padding_mask is None:
        keep = torch.empty(1, dtype=torch.uint8, device=scores.device)   # never read
    else:
        keep = key_padding_mask.to(device=scores.device, dtype=torch.bool).to(torch.uint8).contiguous()
    seed = _draw_seed() if dropout_p > 0.0 else 0
    return MaskedSoftmax.apply(scores, keep, key_padding_mask is not None, float(scale), float(dropout_p), seed)
