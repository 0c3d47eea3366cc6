"""Attention and masked softmax for the BERT family: Triton kernels with a PyTorch fallback.

    from bert_kernels import attention, attention_varlen, cross_entropy, Layout, self_attention
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=0.1)   # q, k, v: (B, H, T, D)
    out = attention_varlen(q, k, v, cu_seqlens, max_seqlen)          # q, k, v: (total, H, D), no padding
    out = self_attention(q, k, v, layout, dropout_p=0.1)             # q, k, v: (B, T, H, D) or (total, H, D)
                                                                     # as `layout` says (bert_kernels/layout.py)
    loss = cross_entropy(logits, labels)                             # the MLM loss (bert_kernels/losses.py):
                                                                     # PyTorch only, one (N, V) buffer

This file is the only place that decides between the backends:
  "triton"  the fused kernels in bert_kernels/attention.py and bert_kernels/softmax.py
            (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1: how CI tests them)
  "torch"   torch.nn.functional.scaled_dot_product_attention / bert_kernels/reference.py

The backend is chosen ONCE, at import: `BERT_KERNELS_IMPL=triton|torch` if set (`KERNELS_IMPL`,
its name before the package was renamed, is still read), else Triton when CUDA and Triton are
usable, else PyTorch. Each call can override it with `impl=`. A forced Triton (by argument or by
the environment) that cannot run is an error that says why; on auto, a case the kernel does not
take (e.g. an odd head dim) falls back to PyTorch and warns once.

torch.compile: the PyTorch path (SDPA) compiles natively; the Triton path is four custom ops,
bertfamily::flash_attention_fwd / _bwd and bertfamily::flash_attention_varlen_fwd / _bwd
(bert_kernels/attention.py), each one opaque node with a fake implementation and a registered backward,
so a compiled model neither breaks its graph at attention nor traces into Triton.

Mask convention: key_padding_mask is (B, T), bool or 0/1, True = a real token. A query whose
keys are all padding gets a zero output and zero gradients, never NaN.

Variable length ("unpadded") layout: the S sequences of a batch laid end to end, (total, H, D),
with cu_seqlens (S+1,) int32 = 0, len_0, len_0 + len_1, ..., total and max_seqlen = the longest
length (a Python int). Sequence s is rows cu_seqlens[s]:cu_seqlens[s+1] and attends only to
itself: padding costs nothing, and several documents packed in one row stay apart.
"""
import math
import os
import warnings

import torch
import torch.nn.functional as F

from . import reference
from .layout import Layout, Unpadded, pad, unpad
from .losses import cross_entropy

# The Triton modules are imported here, BEFORE the functions below are defined: importing a
# submodule sets an attribute of the same name on this package, and `bert_kernels.attention` must
# stay the function. They are optional: no Triton, no Triton backend.
try:
    from . import attention as _triton_attention
    from . import softmax as _triton_softmax
    _TRITON_IMPORT_ERROR = None
except Exception as e:  # ImportError, or Triton failing to initialise
    _triton_attention = _triton_softmax = None
    _TRITON_IMPORT_ERROR = f"{type(e).__name__}: {e}"

IMPLS = ("triton", "torch")


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_unavailable():
    """None if the Triton backend can run on this machine, else the reason it cannot."""
    if _TRITON_IMPORT_ERROR is not None:
        return f"the Triton kernels could not be imported ({_TRITON_IMPORT_ERROR})"
    if not torch.cuda.is_available() and not _interpreting():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"
    return None


def _choose_backend():
    env = os.environ.get("BERT_KERNELS_IMPL", "").strip().lower()
    if not env and os.environ.get("KERNELS_IMPL", "").strip():      # the name before the package was renamed
        warnings.warn("KERNELS_IMPL is read as BERT_KERNELS_IMPL (its new name); set that instead", FutureWarning)
        env = os.environ["KERNELS_IMPL"].strip().lower()
    if env:
        if env not in IMPLS:
            raise ValueError(f"BERT_KERNELS_IMPL={env!r} is not a backend; use one of {IMPLS} or unset it")
        return env, True
    auto = "triton" if torch.cuda.is_available() and _triton_unavailable() is None else "torch"
    return auto, False


BACKEND, _FORCED = _choose_backend()
_warned = set()


def _resolve(impl, why_unsupported):
    """Pick the backend for one call. why_unsupported() -> None or the reason Triton can't take it."""
    forced = impl is not None or _FORCED
    impl = (impl or BACKEND).lower()
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not a backend; use one of {IMPLS}")
    if impl == "torch":
        return "torch"
    reason = _triton_unavailable() or why_unsupported()
    if reason is None:
        return "triton"
    if forced:
        raise RuntimeError(f"the Triton backend was forced but cannot run: {reason}. "
                           "Use impl='torch' or BERT_KERNELS_IMPL=torch for the PyTorch path.")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"bert_kernels: falling back to PyTorch: {reason}", stacklevel=3)
    return "torch"


def _check_qkv(q, k, v, key_padding_mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v shapes do not agree: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_padding_mask must be (B, T) = {(k.shape[0], k.shape[2])}; "
                         f"got {tuple(key_padding_mask.shape)}")


def _sdpa(q, k, v, key_padding_mask, dropout_p, scale):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    keep = key_padding_mask.to(device=q.device, dtype=torch.bool)     # (B, T)
    has_key = keep.any(dim=-1)                                       # (B,)
    # SDPA turns a row with no allowed key into NaN; let such rows see every key, then zero them
    keep = keep | ~has_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :],
                                         dropout_p=dropout_p, scale=scale)  # (B, H, T, D)
    return out * has_key[:, None, None, None].to(out.dtype)


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None, impl=None):
    """softmax(q k^T * scale, padded keys excluded), dropout, times v.

    q, k, v: (B, H, T, D); key_padding_mask: (B, T), True = real token; scale defaults to
    1/sqrt(D); dropout_p is applied to the attention probabilities (pass 0.0 in eval).
    Returns (B, H, T, D) in q's dtype.
    """
    _check_qkv(q, k, v, key_padding_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    backend = _resolve(impl, lambda: _triton_attention.unsupported(q, k, v, key_padding_mask, dropout_p))
    if backend == "triton":
        return _triton_attention.flash_attention(q, k, v, key_padding_mask, dropout_p, scale)
    return _sdpa(q, k, v, key_padding_mask, dropout_p, scale)


def _check_varlen(q, k, v, cu_seqlens, max_seqlen):
    if q.dim() != 3 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v must all be (total, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be a 1-d int32 tensor of S+1 >= 2 offsets; got {cu_seqlens.dtype} "
                         f"of shape {tuple(cu_seqlens.shape)}")
    if not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a Python int >= 0 (the longest sequence); got {max_seqlen!r}")


def _sdpa_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale):
    """Pad the sequences to (S, H, max_seqlen, D), one SDPA call with a key-padding mask, unpad.

    One batched call rather than a Python loop of S small calls (S is B or more: every layer
    would pay S dispatches); the padded slots cost max_seqlen^2 work per sequence, as the dense
    path's attention does. No data-dependent shape: torch.compile can trace it.
    """
    total = q.shape[0]
    cu = cu_seqlens.to(device=q.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]                                               # (S,)
    slot = torch.arange(max_seqlen, device=q.device)                         # (Tmax,)
    real = slot[None, :] < lengths[:, None]                                  # (S, Tmax)
    rows = (cu[:-1, None] + slot[None, :]).clamp(max=max(total - 1, 0))     # (S, Tmax) into total
    # index_select, not x[rows]: its backward is index_add_, far faster on the CPU than index_put_
    S, H, D = rows.shape[0], q.shape[1], q.shape[2]
    q_, k_, v_ = (x.index_select(0, rows.flatten()).view(S, max_seqlen, H, D).transpose(1, 2)
                  for x in (q, k, v))                                        # (S, H, Tmax, D) each
    out = _sdpa(q_, k_, v_, real, dropout_p, scale).transpose(1, 2)          # (S, Tmax, H, D)
    token = torch.arange(total, device=q.device)                             # (total,)
    seq = torch.searchsorted(cu[1:], token, right=True)                      # (total,) sequence of each row
    slot = seq * max_seqlen + token - cu[seq]                                # (total,) its padded slot
    return out.reshape(S * max_seqlen, H, D).index_select(0, slot)           # (total, H, D)


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, scale=None, impl=None):
    """Attention over sequences laid end to end: each attends to itself only (no padding, no crossing).

    q, k, v: (total, H, D); cu_seqlens: (S+1,) int32 cumulative lengths, 0 first and total last;
    max_seqlen: the longest sequence, a Python int. scale defaults to 1/sqrt(D); dropout_p is
    applied to the attention probabilities. Returns (total, H, D) in q's dtype. Same numbers as
    `attention` on the padded batch, at the real positions.
    """
    _check_varlen(q, k, v, cu_seqlens, max_seqlen)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    backend = _resolve(impl, lambda: _triton_attention.unsupported_varlen(q, k, v, cu_seqlens, dropout_p))
    if backend == "triton":
        return _triton_attention.flash_attention_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale)
    if q.shape[0] == 0:
        return q.clone()                                                     # no token at all
    return _sdpa_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale)


def self_attention(q, k, v, layout, dropout_p=0.0, scale=None, impl=None):
    """Attention of each token to the real tokens of its own sequence, in the batch's layout.

    q, k, v: (B, T, H, D) with a padded `layout` (its mask, or none), (total, H, D) with an unpadded
    one: a projection's output viewed by head, as flash-attn takes it, so a model has one call for
    both and no transposes. Returns q's shape.
    """
    if layout.unpadded is not None:
        u = layout.unpadded
        return attention_varlen(q, k, v, u.cu_seqlens, u.max_seqlen, dropout_p=dropout_p, scale=scale, impl=impl)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))                         # (B, H, T, D) views
    out = attention(q, k, v, key_padding_mask=layout.mask, dropout_p=dropout_p, scale=scale, impl=impl)
    return out.transpose(1, 2)                                                # (B, T, H, D)


def masked_softmax(scores, key_padding_mask=None, scale=1.0, dropout_p=0.0, impl=None):
    """softmax(scale * scores) over the last dim with padded keys at probability 0, then dropout.

    scores: (B, H, Tq, Tk); key_padding_mask: (B, Tk). For when the probabilities themselves
    are wanted; `attention` never materializes them.
    """
    if scores.dim() != 4:
        raise ValueError(f"scores must be (B, H, Tq, Tk); got {tuple(scores.shape)}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (scores.shape[0], scores.shape[-1]):
        raise ValueError(f"key_padding_mask must be (B, Tk) = {(scores.shape[0], scores.shape[-1])}; "
                         f"got {tuple(key_padding_mask.shape)}")
    backend = _resolve(impl, lambda: _triton_softmax.unsupported(scores, key_padding_mask, dropout_p))
    if backend == "triton":
        return _triton_softmax.masked_softmax(scores, key_padding_mask, float(scale), dropout_p)
    return reference.masked_softmax(scores, key_padding_mask, scale, dropout_p)


__all__ = ["attention", "attention_varlen", "self_attention", "masked_softmax", "cross_entropy", "Layout", "Unpadded",
           "pad", "unpad", "BACKEND", "IMPLS", "reference"]
