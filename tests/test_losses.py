"""bert_kernels.cross_entropy against torch.nn.functional.cross_entropy: loss and gradient, every case the
MLM heads meet (and some they do not), plus the metric and the sampling that read the same logits."""
import pytest
import torch
import torch.nn.functional as F

import bert
import electra
from bert_kernels import cross_entropy


def logits_and_labels(N=37, V=501, dtype=torch.float32, ignored=(), seed=0, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * spread).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[list(ignored)] = -100
    return logits, labels


def both(logits, labels, scale=1.0):
    """(loss, grad) of ours and of F.cross_entropy(logits.float(), labels) for loss * scale."""
    out = []
    for fn in (cross_entropy, lambda x, y: F.cross_entropy(x.float(), y)):
        x = logits.clone().requires_grad_()
        loss = fn(x, labels)
        (loss * scale).backward()
        out.append((loss.detach(), x.grad))
    return out


@pytest.mark.parametrize("ignored", [(), (0, 5, 36)], ids=["all-labelled", "some-ignored"])
@pytest.mark.parametrize("scale", [1.0, 2.5, 65536.0], ids=["plain", "weighted", "fp16-scaler"])
def test_matches_torch_fp32(ignored, scale):
    (loss, grad), (want_loss, want_grad) = both(*logits_and_labels(ignored=ignored), scale=scale)
    torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, want_grad, atol=1e-6 * scale, rtol=1e-5)
    assert grad.dtype == torch.float32
    if ignored:
        assert grad[list(ignored)].abs().max() == 0                  # an ignored row gets no gradient


def test_gradient_by_hand():
    """softmax - onehot, over the n labelled rows: written out for a 2 x 3 case."""
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([2, 0])
    loss = cross_entropy(logits, labels)
    p = torch.tensor([[1.0, 2.0, 3.0]]).exp() / torch.tensor([1.0, 2.0, 3.0]).exp().sum()
    want_loss = (-p[0, 2].log() - torch.tensor(1 / 3).log()) / 2
    torch.testing.assert_close(loss, want_loss)
    loss.backward()
    want = torch.stack([p[0] - torch.tensor([0.0, 0.0, 1.0]), torch.full((3,), 1 / 3) - torch.tensor([1.0, 0, 0])]) / 2
    torch.testing.assert_close(logits.grad, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_computed_in_fp32(dtype):
    (loss, grad), (want_loss, want_grad) = both(*logits_and_labels(dtype=dtype, ignored=(3,)))
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.float(), want_grad.float(), atol=1e-3, rtol=1e-2)


def test_extreme_logits_stay_finite():
    logits, labels = logits_and_labels(spread=1e4)                       # log_softmax far below -87
    (loss, grad), (want_loss, want_grad) = both(logits, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-2)
    torch.testing.assert_close(grad, want_grad)


def test_every_row_ignored_is_nan_with_zero_gradient():
    logits, labels = logits_and_labels(N=4, ignored=range(4))
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, labels)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits, labels))    # as torch's
    loss.backward()
    assert x.grad.abs().max() == 0


def test_no_grad_gives_the_same_loss():
    logits, labels = logits_and_labels()
    with torch.no_grad():
        loss = cross_entropy(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels), atol=1e-6, rtol=1e-6)


def test_gradient_reaches_a_linear_layer_like_torch():
    """The MLM head's case: logits = h W^T + b, the loss of both and every gradient compared."""
    g = torch.Generator().manual_seed(1)
    h, W, b = torch.randn(20, 16, generator=g), torch.randn(300, 16, generator=g), torch.randn(300, generator=g)
    labels = torch.randint(0, 300, (20,), generator=g)
    grads = []
    for fn in (cross_entropy, F.cross_entropy):
        params = [t.clone().requires_grad_() for t in (h, W, b)]
        fn(F.linear(*params), labels).backward()
        grads.append([p.grad for p in params])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_second_backward_through_the_same_graph_raises():
    logits, labels = logits_and_labels()
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


@pytest.mark.parametrize("shapes", [((4, 5, 6), (4, 5)), ((4, 6), (5,)), ((4, 6), (4, 1))])
def test_bad_shapes_are_named(shapes):
    with pytest.raises(ValueError, match=r"logits \(N, V\) and labels \(N,\)"):
        cross_entropy(torch.zeros(shapes[0]), torch.zeros(shapes[1], dtype=torch.long))


def test_mlm_accuracy_is_the_argmax_hit_rate():
    """bert._mlm_loss reads the accuracy off amax (fast); it must equal argmax == label (no ties here)."""
    logits, labels = logits_and_labels(N=400, V=50, spread=1.0)
    labels[::3] = logits[::3].argmax(-1)                                # a third certainly right
    metrics = {}
    bert._mlm_loss(logits, labels, metrics)
    want = (logits.argmax(-1) == labels).float().mean()
    assert metrics["mlm_acc"] == want and 0.33 < float(want) < 0.5


def test_gumbel_sample_takes_the_row_maximum():
    """With all the probability on one id per row, the sample is that id (at any temperature)."""
    logits = torch.full((64, 300), -1e4)
    target = torch.randint(0, 300, (64,))
    logits[torch.arange(64), target] = 0.0
    for temperature in (0.5, 1.0, 3.0):
        assert torch.equal(electra.gumbel_sample(logits, torch.Generator().manual_seed(0), temperature), target)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        electra.gumbel_sample(logits, temperature=0.0)
