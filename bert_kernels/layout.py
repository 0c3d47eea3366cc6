"""The layouts a batch runs through the layers in, and the moves between them.

    layout = Layout.of(input_ids, attention_mask, document_ids)     # decided once per forward
    x = embeddings(layout.gather(input_ids), ...)                   # (B, T, H) or (total, H)
    ... every layer: bert_kernels.self_attention(q, k, v, layout) ...    # q, k, v: x's shape, by head
    h = layout.pad(x)                                               # (B, T, H) again

  padded    x is (B, T, H) and attention takes a key-padding mask (B, T), True = a real token, or no
            mask at all when no row has padding.
  unpadded  x is (total, H): the real tokens of the batch end to end, so embeddings, projections,
            feed-forward and norms run on real tokens only. The S sequences are rows cu_seqlens[s]:
            cu_seqlens[s+1]; a sequence never crosses a row, a padded position or, with document_ids
            (several documents packed in a row, e.g. [[0, 0, 0, 1, 1, 2]]), a change of document, so
            each attends to itself only. pad() scatters the rows back to (B, T, H), zeros at padding.

Which one runs: unpadded when the batch has padding (and the model's config.unpad), or packed
documents; padded otherwise, and always under torch.compile: unpad() finds the real tokens with
nonzero() and reads max_seqlen with .item(), which would break the graph. Either way the real
positions get the same numbers. `starts` (True at each packed document's first token) is what a
model needs to restart its position ids at each document.
"""
from typing import NamedTuple, Optional

import torch


class Unpadded(NamedTuple):
    """Where the real tokens of a (B, T) batch are, for the unpadded (total, H) layout."""
    indices: torch.Tensor         # (total,) int64: flat index b * T + t of each real token, in order
    cu_seqlens: torch.Tensor      # (S+1,) int32: sequence s is rows cu_seqlens[s]:cu_seqlens[s+1]
    max_seqlen: int               # the longest sequence
    starts: torch.Tensor          # (B, T) bool: True at the first token of each sequence


def unpad(attention_mask, document_ids=None):
    """The sequences of a batch: the runs of real tokens in each row, split where document_ids changes.

    attention_mask: (B, T) bool, True = real; document_ids: (B, T) int or None. A sequence never
    crosses a row, a padded position or a change of document id.
    """
    real = attention_mask                                                     # (B, T)
    new = torch.ones_like(real)
    new[:, 1:] = ~real[:, :-1]                                                # first column, or after padding
    if document_ids is not None:
        new[:, 1:] |= document_ids[:, 1:] != document_ids[:, :-1]
    starts = real & new                                                       # (B, T)
    indices = real.flatten().nonzero().squeeze(1)                             # (total,) graph break here
    first = starts.flatten()[indices].nonzero().squeeze(1)                    # (S,) row where each sequence starts
    if first.numel() == 0:                                                    # no real token at all
        first = indices.new_zeros(1)
    cu_seqlens = torch.cat([first, first.new_tensor([indices.numel()])]).to(torch.int32)   # (S+1,)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return Unpadded(indices, cu_seqlens, max_seqlen, starts)


def pad(x, indices, B, T):
    """(total, H) rows back to (B, T, H), zeros at the padded positions."""
    out = x.new_zeros(B * T, x.shape[-1]).index_copy(0, indices, x)          # (B*T, H)
    return out.view(B, T, -1)                                                 # (B, T, H)


class Layout(NamedTuple):
    """How one batch runs through the layers: padded (`mask`) or unpadded (`unpadded`). See the module docstring."""
    shape: tuple                          # (B, T) of the batch
    mask: Optional[torch.Tensor]          # padded: the (B, T) bool key-padding mask, None = no padding
    unpadded: Optional[Unpadded]          # unpadded: where the real tokens are; None when padded
    starts: Optional[torch.Tensor]        # (B, T) bool, True at each packed document's first token; None unpacked

    @classmethod
    def of(cls, input_ids, attention_mask=None, document_ids=None, unpad_padding=True):
        """The layout for a batch of input_ids (B, T): unpadded when it has padding and unpad_padding is
        set, or when document_ids (B, T) packs documents in its rows; padded otherwise."""
        shape = tuple(input_ids.shape)
        # compiled, the padded layout always: unpadding's nonzero() / .item() would break the graph
        padded = attention_mask is None or not unpad_padding or torch.compiler.is_compiling()
        if attention_mask is not None:
            attention_mask = attention_mask.bool()                            # (B, T), True = real token
            # no padding at all (as packed rows): attend with no mask. Asked only where unpadding asks
            # anyway (on a GPU, bool() waits for the device)
            if not padded and bool(attention_mask.all()):
                attention_mask, padded = None, True
        if document_ids is None and padded:
            return cls(shape, attention_mask, None, None)
        if attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.bool, device=input_ids.device)
        u = unpad(attention_mask, document_ids)
        return cls(shape, None, u, None if document_ids is None else u.starts)

    def gather(self, t):
        """A (B, T) (or (1, T)) tensor of per-token values in this layout: itself, or its (total,) real tokens."""
        if self.unpadded is None or t is None:
            return t
        return t.expand(self.shape).reshape(-1)[self.unpadded.indices]        # (total,)

    def pad(self, x):
        """The layers' output back to (B, T, H): itself, or the real rows scattered, zeros at padding."""
        if self.unpadded is None:
            return x
        return pad(x, self.unpadded.indices, *self.shape)                     # (B, T, H)
