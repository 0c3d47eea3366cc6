"""Cross-entropy for large vocabularies: the gradient is built in the forward, in one (N, V) buffer.

F.cross_entropy(logits, labels) keeps log_softmax(logits), an (N, V) tensor, for the backward,
which then allocates two more of the same size: the gradient of the NLL (zeros with -1/n at the
labels) and the gradient of the log-softmax. With a 30k vocabulary those are tens of MB each, and
on a CPU a fresh buffer that size is paid for in page faults as much as in arithmetic.

The gradient of the mean cross-entropy is known in closed form,

    d loss / d logits[i] = (softmax(logits[i]) - onehot(labels[i])) / n      (n = rows with a label)

so the forward computes log_softmax once, reads the loss off it, and turns that same buffer into
the gradient in place (exp, subtract 1 at the labels, divide by n): one (N, V) buffer in all,
the trick of Liger-Kernel's cross-entropy. The backward only scales it by the incoming gradient
(1 for a plain loss). Same numbers as F.cross_entropy (same log_softmax, same formula).

Limits: the mean reduction only, no label smoothing or class weights (the MLM heads need neither);
the gradient is consumed by the backward, so backward through the same graph twice
(retain_graph=True) raises PyTorch's "modified by an inplace operation" error.
"""
import torch


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index):
        valid = labels != ignore_index                                          # (N,)
        target = labels.masked_fill(~valid, 0)                                  # (N,) any id where ignored
        n = valid.sum()                                                         # rows that count
        buf = torch.log_softmax(logits.float(), dim=-1)                         # (N, V) float32, the one buffer
        picked = buf.gather(-1, target[:, None]).squeeze(-1)                    # (N,) log p(label)
        loss = -(picked * valid).sum() / n                                      # mean; nan if n = 0, as F's
        if ctx.needs_input_grad[0]:
            buf.exp_()                                                          # softmax
            buf.scatter_add_(-1, target[:, None], -valid[:, None].float())      # - onehot(label), labelled rows
            buf.mul_((valid / n.clamp(min=1))[:, None])                         # / n; ignored rows -> 0
            ctx.save_for_backward(buf)
            ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad, = ctx.saved_tensors                                               # (N, V) float32
        grad.mul_(grad_loss)                                                    # in place: consumed once
        return grad.to(ctx.dtype), None, None


def cross_entropy(logits, labels, ignore_index=-100):
    """Mean cross-entropy of logits (N, V) against labels (N,), over the rows whose label is not
    ignore_index; = F.cross_entropy(logits.float(), labels) with one (N, V) buffer instead of three.
    Computed in float32 whatever the logits' dtype; the gradient comes back in the logits' dtype."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy takes logits (N, V) and labels (N,); got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    return _CrossEntropy.apply(logits, labels, ignore_index)
