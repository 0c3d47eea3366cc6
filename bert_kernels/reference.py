"""Plain PyTorch attention and masked softmax: the ground truth.

Every Triton kernel in this package has its twin here. The tests compare the
two, the benchmarks use these as the "eager" provider, and `bert_kernels/__init__.py`
falls back to them (through SDPA for attention) when Triton cannot run.

Conventions shared by the whole package:
  q, k, v             (B, H, T, D)
  key_padding_mask    (B, T) bool or 0/1, True = a real token that may be attended to
  a query row whose keys are ALL padding gets probability 0 everywhere (output 0),
  never NaN, and its gradients are 0.

This file favours clarity over speed: it materializes the (B, H, T, T) scores.
"""
import math

import torch


def _keep_mask(key_padding_mask, device):
    """(B, T) bool/0-1 mask -> (B, 1, 1, T) bool, True = attend."""
    if key_padding_mask is None:
        return None
    return key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]


def masked_softmax(scores, key_padding_mask=None, scale=1.0, dropout_p=0.0, rng=None):
    """softmax(scale * scores) over the last dim, with padded keys excluded, then dropout.

    scores: (B, H, Tq, Tk); key_padding_mask: (B, Tk). Computed in float32, returned in
    the dtype of `scores`. Dropout zeroes probabilities with probability `dropout_p` and
    scales the survivors by 1 / (1 - dropout_p), like torch.nn.functional.dropout; `rng`: an optional
    torch.Generator for that draw.
    """
    s = scores.float() * scale                                    # (B, H, Tq, Tk)
    keep = _keep_mask(key_padding_mask, s.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
        # a row with no real key is all -inf: softmax would give NaN, we want zeros
        s = s.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
    p = torch.softmax(s, dim=-1)
    if keep is not None:
        p = p * keep                                              # exact zeros on padded keys
    if dropout_p > 0.0:
        drop = torch.rand(p.shape, device=p.device, generator=rng) < dropout_p
        p = p.masked_fill(drop, 0.0) / (1.0 - dropout_p)
    return p.to(scores.dtype)


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None, rng=None):
    """softmax(q k^T * scale, padded keys excluded) v, computed eagerly in float32.

    q, k, v: (B, H, T, D) (q may have its own length Tq); returns (B, H, Tq, D) in q's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.float() @ k.float().transpose(-2, -1)              # (B, H, Tq, Tk)
    p = masked_softmax(scores, key_padding_mask, scale, dropout_p, rng)
    return (p @ v.float()).to(q.dtype)                            # (B, H, Tq, D)


def attention_varlen(q, k, v, cu_seqlens, max_seqlen=None, dropout_p=0.0, scale=None, rng=None):
    """Variable-length attention, one sequence at a time: sequence s is rows cu_seqlens[s]:cu_seqlens[s+1].

    q, k, v: (total, H, D), the sequences laid end to end with no padding; cu_seqlens: (S+1,) int
    cumulative lengths starting at 0. Each query attends to the keys of its own sequence only
    (block-diagonal attention). max_seqlen is accepted for the signature's sake and not needed.
    Returns (total, H, D) in q's dtype.
    """
    bounds = cu_seqlens.tolist()
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        seq = [x[start:end].transpose(0, 1)[None] for x in (q, k, v)]            # (1, H, L, D) each
        y = attention(*seq, dropout_p=dropout_p, scale=scale, rng=rng)
        pieces.append(y[0].transpose(0, 1))                                       # (L, H, D)
    return torch.cat(pieces, dim=0)                                               # (total, H, D)
