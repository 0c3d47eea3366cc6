"""Tests for bert_kernels/attention.py and bert_kernels/softmax.py against bert_kernels/reference.py.

On a machine without CUDA the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which costs ~10 ms per (program x block step): shapes stay small here and
bfloat16 (wrong in the interpreter) runs only on a GPU. On a GPU the same tests run compiled.
Outputs AND gradients are compared with the reference computed in float64 from the same inputs.
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import bert_kernels
from bert_kernels import reference

pytestmark = pytest.mark.skipif(bert_kernels._triton_unavailable() is not None,
                                reason=f"Triton backend unavailable: {bert_kernels._triton_unavailable()}")

if bert_kernels._TRITON_IMPORT_ERROR is None:
    from bert_kernels.attention import flash_attention
    from bert_kernels.softmax import masked_softmax

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
NO_BF16 = pytest.mark.skipif(not CUDA, reason="bfloat16 is wrong in the Triton interpreter: GPU only")

# (dtype, atol, rtol), compared with a float64 reference of the same (rounded) inputs
DTYPES = [
    pytest.param(torch.float32, 2e-5, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-2, 5e-3, id="fp16"),
    pytest.param(torch.bfloat16, 6e-2, 3e-2, id="bf16", marks=NO_BF16),
]
# (B, H, Tq, Tk, D): odd lengths around the 64-wide interpreter block, Tq != Tk, every head dim
SHAPES = [
    (2, 2, 1, 1, 16),
    (2, 2, 17, 17, 32),
    (2, 2, 64, 64, 64),
    (2, 2, 128, 128, 32),
    (2, 2, 127, 127, 32),
    (2, 2, 129, 129, 16),
    (1, 2, 8, 8, 128),
    (2, 2, 17, 70, 32),
    (2, 1, 70, 17, 16),
]
MASKS = ["none", "lengths", "random", "left"]


# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------
def make_qkv(B, H, Tq, Tk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, H, Tk, D, generator=g)
    v = torch.randn(B, H, Tk, D, generator=g)
    return [x.to(DEVICE, dtype).requires_grad_() for x in (q, k, v)]


def make_mask(B, T, kind, seed=0):
    """(B, T) bool, True = real key. "lengths": right padding with row 0 of length 1;
    "random": scattered padding with row 0 all padding (its queries must give 0, never NaN);
    "left": left padding, so whole leading key blocks are padding before the first real key."""
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    if kind in ("lengths", "left"):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = 1
        mask = torch.arange(T)[None, :] < lengths[:, None]
        if kind == "left":
            mask = mask.flip(1)
    else:
        mask = torch.rand(B, T, generator=g) < 0.6
        mask[0] = False
    return mask.to(DEVICE)


def grads_of(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


def reference_attention(q, k, v, mask, grad_out, scale=None, dropout_mask=None, dropout_p=0.0):
    """Output and (dq, dk, dv) in float64; dropout_mask (B, H, Tq, Tk) True = kept, if given."""
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if dropout_mask is None:
        out = reference.attention(qd, kd, vd, mask, scale=scale)
    else:
        probs = reference.masked_softmax(qd @ kd.transpose(-2, -1), mask, scale)   # (B, H, Tq, Tk)
        out = (probs * dropout_mask / (1.0 - dropout_p)) @ vd
    return out, grads_of(out, (qd, kd, vd), grad_out.double())


def assert_close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def assert_matches_reference(out, q, k, v, mask, atol, rtol, **reference_kw):
    """The kernel's output, and its gradients for a random output gradient, against reference_attention."""
    grad_out = torch.randn_like(out)
    grads = grads_of(out, (q, k, v), grad_out)
    ref, ref_grads = reference_attention(q, k, v, mask, grad_out, **reference_kw)
    assert_close(out, ref, atol, rtol, "out")
    for name, got, want in zip("qkv", grads, ref_grads):
        assert_close(got, want, atol, rtol, f"d{name}")


# -------------------------------------------------------------------------------------------------
# Flash attention vs the reference
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("B, H, Tq, Tk, D", SHAPES)
def test_attention_matches_reference(B, H, Tq, Tk, D, mask_kind, dtype, atol, rtol):
    q, k, v = make_qkv(B, H, Tq, Tk, D, dtype)
    mask = make_mask(B, Tk, mask_kind)
    out = bert_kernels.attention(q, k, v, key_padding_mask=mask, impl="triton")
    assert out.shape == (B, H, Tq, D) and out.dtype == dtype
    assert_matches_reference(out, q, k, v, mask, atol, rtol)


@pytest.mark.parametrize("layout", ["transposed", "packed"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_attention_non_contiguous_inputs(layout, dtype, atol, rtol):
    """q, k, v as views, as a model makes them: (B, T, H, D).transpose(1, 2) each, or slices of one
    packed (B, T, 3, H, D) projection; the output gradient is a transposed view as well."""
    B, T, H, D = 2, 33, 2, 32
    g = torch.Generator().manual_seed(1)
    if layout == "packed":
        leaves = [torch.randn(B, T, 3, H, D, generator=g).to(DEVICE, dtype).requires_grad_()]
        q, k, v = (leaves[0][:, :, i].transpose(1, 2) for i in range(3))      # (B, H, T, D) views
    else:
        leaves = [torch.randn(B, T, H, D, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3)]
        q, k, v = (x.transpose(1, 2) for x in leaves)
    mask = make_mask(B, T, "random")
    out = flash_attention(q, k, v, mask, 0.0, None)
    grad_out = torch.randn(B, T, H, D, generator=g).to(DEVICE, dtype).transpose(1, 2)
    ref, (rq, rk, rv) = reference_attention(q, k, v, mask, grad_out)
    assert_close(out, ref, atol, rtol, "out")
    grads = grads_of(out, leaves, grad_out)
    if layout == "packed":
        assert_close(grads[0], torch.stack([rq, rk, rv], 2).transpose(1, 3), atol, rtol, "dqkv")
    else:
        for name, got, want in zip("qkv", grads, (rq, rk, rv)):
            assert_close(got, want.transpose(1, 2), atol, rtol, f"d{name}")


def test_attention_expanded_grad_output():
    """out.sum().backward() hands the kernel a gradient with all strides 0."""
    q, k, v = make_qkv(2, 2, 17, 17, 16, torch.float32)
    mask = make_mask(2, 17, "lengths")
    flash_attention(q, k, v, mask, 0.0, None).sum().backward()
    _, ref_grads = reference_attention(q, k, v, mask, torch.ones(2, 2, 17, 16, device=DEVICE))
    for name, x, want in zip("qkv", (q, k, v), ref_grads):
        assert_close(x.grad, want, 2e-5, 1e-5, f"d{name}")


def test_attention_scale_and_01_mask():
    q, k, v = make_qkv(2, 2, 17, 17, 16, torch.float32)
    mask = make_mask(2, 17, "random").long()                                  # 0/1 instead of bool
    out = flash_attention(q, k, v, mask, 0.0, 0.3)
    assert_matches_reference(out, q, k, v, mask, 2e-5, 1e-5, scale=0.3)


def test_direct_call_equals_dispatch():
    q, k, v = make_qkv(2, 2, 17, 17, 32, torch.float32)
    mask = make_mask(2, 17, "random")
    a = bert_kernels.attention(q, k, v, mask, impl="triton")
    b = flash_attention(q, k, v, mask, 0.0, 1 / math.sqrt(32))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dropout_p", [0.0, 0.5])
def test_all_padding_rows_give_exact_zeros(dtype, dropout_p):
    B, H, T, D = 2, 2, 70, 16
    q, k, v = make_qkv(B, H, T, T, D, dtype)
    mask = make_mask(B, T, "random")                                          # batch row 0: all padding
    out = flash_attention(q, k, v, mask, dropout_p, None)
    dq, dk, dv = grads_of(out, (q, k, v), torch.randn_like(out))
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
        assert (t[0] == 0).all()
    assert (dk[1][:, ~mask[1]] == 0).all() and (dv[1][:, ~mask[1]] == 0).all()  # padded keys: no gradient


@pytest.mark.slow
def test_attention_longer_sequence():
    B, H, T, D = 1, 2, 300, 16        # 5 x 5 blocks of 64 under the interpreter
    q, k, v = make_qkv(B, H, T, T, D, torch.float32)
    mask = make_mask(B, T, "lengths") | True
    mask[0, 250:] = False
    out = flash_attention(q, k, v, mask, 0.0, None)
    assert_matches_reference(out, q, k, v, mask, 2e-5, 1e-5)


@pytest.mark.skipif(not CUDA, reason="T = 4096 takes minutes under the Triton interpreter: GPU only")
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[1:])
def test_attention_long_sequence_gpu(dtype, atol, rtol):
    B, H, T, D = 2, 4, 4096, 64
    q, k, v = make_qkv(B, H, T, T, D, dtype)
    mask = make_mask(B, T, "lengths")
    out = flash_attention(q, k, v, mask, 0.0, None)
    assert_matches_reference(out, q, k, v, mask, atol, rtol)


@settings(max_examples=10, deadline=None, database=None)
@given(B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 70), D=st.sampled_from([16, 32]),
       mask_kind=st.sampled_from(MASKS), seed=st.integers(0, 2**16))
def test_attention_property(B, H, T, D, mask_kind, seed):
    q, k, v = make_qkv(B, H, T, T, D, torch.float32, seed=seed)
    mask = make_mask(B, T, mask_kind, seed=seed)
    out = flash_attention(q, k, v, mask, 0.0, None)
    assert_matches_reference(out, q, k, v, mask, 2e-5, 1e-5)


# -------------------------------------------------------------------------------------------------
# Dropout inside the flash kernel
# -------------------------------------------------------------------------------------------------
def test_attention_dropout_same_seed_same_result():
    q, k, v = make_qkv(2, 2, 33, 33, 16, torch.float32)
    mask = make_mask(2, 33, "lengths")

    def run(seed):
        torch.manual_seed(seed)
        out = flash_attention(q, k, v, mask, 0.3, None)
        return (out, *grads_of(out, (q, k, v), torch.ones_like(out)))

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))          # bit-identical, gradients too
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[:2])
def test_attention_dropout_matches_reference_with_recovered_mask(dtype, atol, rtol):
    """Recover the kernel's dropout mask with v = identity (then out = dropped P / (1 - p)), rerun
    with the same seed and a random v, and check output and gradients against the reference
    computed with that mask. Also: the fraction dropped is p."""
    B, H, T, D, p = 2, 2, 64, 64, 0.25
    q, k, v = make_qkv(B, H, T, T, D, dtype)
    mask = make_mask(B, T, "lengths")
    eye = torch.eye(T, D, device=DEVICE, dtype=dtype).expand(B, H, T, D)
    torch.manual_seed(123)
    probs_dropped = flash_attention(q, k, eye, mask, p, None)[..., :T]       # (B, H, T, T)
    keep = probs_dropped != 0
    real = mask[:, None, None, :].expand(B, H, T, T)                           # entries that can be kept
    assert not keep[~real].any()
    rate = 1.0 - keep[real].float().mean().item()
    n = real.sum().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n), f"drop rate {rate:.4f} vs {p}"

    torch.manual_seed(123)
    out = flash_attention(q, k, v, mask, p, None)
    assert_matches_reference(out, q, k, v, mask, atol, rtol, dropout_mask=keep, dropout_p=p)


def test_attention_dropout_same_mask_as_masked_softmax():
    """Both kernels take offsets ((b*H + h)*Tq + i)*Tk + j: same seed, same dropped entries."""
    B, H, Tq, Tk, D, p = 2, 2, 33, 20, 32, 0.4
    q, k, v = make_qkv(B, H, Tq, Tk, D, torch.float32)
    mask = make_mask(B, Tk, "random")
    scale = 1 / math.sqrt(D)
    torch.manual_seed(99)
    out = flash_attention(q, k, v, mask, p, scale)
    torch.manual_seed(99)
    out2 = masked_softmax(q @ k.transpose(-2, -1), mask, scale, p) @ v
    grad_out = torch.randn_like(out)
    assert_close(out, out2, 2e-5, 1e-5, "out")
    for name, a, b in zip("qkv", grads_of(out, (q, k, v), grad_out), grads_of(out2, (q, k, v), grad_out)):
        assert_close(a, b, 2e-5, 1e-5, f"d{name}")


@pytest.mark.slow
def test_attention_dropout_preserves_expected_value():
    B, H, T, D, p, n = 1, 1, 17, 16, 0.2, 200
    q, k, v = make_qkv(B, H, T, T, D, torch.float32)
    mask = make_mask(B, T, "lengths") | True
    torch.manual_seed(0)
    with torch.no_grad():
        outs = torch.stack([flash_attention(q, k, v, mask, p, None) for _ in range(n)])
        expected = flash_attention(q, k, v, mask, 0.0, None)
    err = (outs.mean(0) - expected).abs()
    bound = 5 * outs.std(0) / math.sqrt(n) + 1e-4
    assert (err <= bound).all(), f"max error {err.max():.4f}"


# -------------------------------------------------------------------------------------------------
# Masked softmax
# -------------------------------------------------------------------------------------------------
SOFTMAX_SHAPES = [(2, 2, 1, 1), (2, 2, 17, 17), (2, 3, 5, 129), (1, 2, 7, 1000), (1, 1, 3, 4096)]


def reference_softmax(scores, mask, scale, grad_out, dropout_mask=None, dropout_p=0.0):
    x = scores.detach().double().requires_grad_()
    y = reference.masked_softmax(x, mask, scale)
    if dropout_mask is not None:
        y = y * dropout_mask / (1.0 - dropout_p)
    return y, grads_of(y, (x,), grad_out.double())[0]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("B, H, Tq, Tk", SOFTMAX_SHAPES)
def test_masked_softmax_matches_reference(B, H, Tq, Tk, mask_kind, dtype, atol, rtol):
    g = torch.Generator().manual_seed(0)
    scores = (3 * torch.randn(B, H, Tq, Tk, generator=g)).to(DEVICE, dtype).requires_grad_()
    mask = make_mask(B, Tk, mask_kind)
    y = bert_kernels.masked_softmax(scores, mask, scale=0.7, impl="triton")
    assert y.shape == scores.shape and y.dtype == dtype
    grad_out = torch.randn_like(y)
    (dx,) = grads_of(y, (scores,), grad_out)
    ref, ref_dx = reference_softmax(scores, mask, 0.7, grad_out)
    assert_close(y, ref, atol, rtol, "probs")
    assert_close(dx, ref_dx, atol, rtol, "dscores")
    if mask is not None and not mask[0].any():
        assert (y[0] == 0).all() and (dx[0] == 0).all()
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()


def test_masked_softmax_non_contiguous():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 9, 2, 33, generator=g).to(DEVICE).requires_grad_()
    scores = base.transpose(1, 2)                                          # (2, 2, 9, 33), a view
    mask = make_mask(2, 33, "lengths")
    y = masked_softmax(scores, mask, 1.0, 0.0)
    grad_out = torch.randn(2, 9, 2, 33, generator=g).to(DEVICE).transpose(1, 2)
    (dx,) = grads_of(y, (base,), grad_out)
    ref, ref_dx = reference_softmax(scores, mask, 1.0, grad_out)
    assert_close(y, ref, 2e-5, 1e-5, "probs")
    assert_close(dx, ref_dx.transpose(1, 2), 2e-5, 1e-5, "dscores")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[:2])
def test_masked_softmax_dropout(dtype, atol, rtol):
    """Drop rate p; same seed -> same output; gradient = reference with the recovered mask."""
    B, H, Tq, Tk, p = 2, 2, 16, 512, 0.1
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, H, Tq, Tk, generator=g).to(DEVICE, dtype).requires_grad_()
    mask = make_mask(B, Tk, "lengths")
    mask[0, :300] = True
    torch.manual_seed(5)
    y = masked_softmax(scores, mask, 1.0, p)
    torch.manual_seed(5)
    assert torch.equal(y, masked_softmax(scores, mask, 1.0, p))
    keep = y != 0
    real = mask[:, None, None, :].expand_as(y)
    assert not keep[~real].any()
    rate = 1.0 - keep[real].float().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / real.sum().item()), f"drop rate {rate:.4f} vs {p}"
    grad_out = torch.randn_like(y)
    (dx,) = grads_of(y, (scores,), grad_out)
    ref, ref_dx = reference_softmax(scores, mask, 1.0, grad_out, dropout_mask=keep, dropout_p=p)
    assert_close(y, ref, atol, rtol, "probs")
    assert_close(dx, ref_dx, atol, rtol, "dscores")


# -------------------------------------------------------------------------------------------------
# Dispatch (bert_kernels/__init__.py) and the launchers' checks
# -------------------------------------------------------------------------------------------------
def test_torch_and_triton_backends_agree():
    q, k, v = make_qkv(2, 2, 40, 40, 32, torch.float32)
    mask = make_mask(2, 40, "random")
    a = bert_kernels.attention(q, k, v, mask, impl="torch")
    b = bert_kernels.attention(q, k, v, mask, impl="triton")
    assert_close(a, b, 2e-5, 1e-5, "attention")
    scores = torch.randn(2, 2, 7, 40, device=DEVICE)
    a = bert_kernels.masked_softmax(scores, mask, 0.5, impl="torch")
    b = bert_kernels.masked_softmax(scores, mask, 0.5, impl="triton")
    assert_close(a, b, 2e-6, 1e-5, "masked_softmax")


def test_forced_triton_that_cannot_run_raises(monkeypatch):
    """CPU tensors without the interpreter: forcing Triton is an error, never a silent fallback."""
    monkeypatch.setattr(bert_kernels, "_interpreting", lambda: False)
    if CUDA:   # the CUDA check passes; the kernels' own check refuses CPU tensors
        monkeypatch.setattr(bert_kernels._triton_attention, "_INTERPRET", False)
        monkeypatch.setattr(bert_kernels._triton_softmax, "_INTERPRET", False)
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="forced"):
        bert_kernels.attention(q, q, q, impl="triton")
    with pytest.raises(RuntimeError, match="forced"):
        bert_kernels.masked_softmax(q, impl="triton")
    monkeypatch.setattr(bert_kernels, "BACKEND", "triton")
    monkeypatch.setattr(bert_kernels, "_FORCED", True)                          # as BERT_KERNELS_IMPL=triton does
    with pytest.raises(RuntimeError, match="forced"):
        bert_kernels.attention(q, q, q)


def test_unsupported_head_dim_falls_back_on_auto_and_raises_when_forced(monkeypatch):
    monkeypatch.setattr(bert_kernels, "BACKEND", "triton")
    monkeypatch.setattr(bert_kernels, "_FORCED", False)
    monkeypatch.setattr(bert_kernels, "_warned", set())
    q, k, v = make_qkv(2, 2, 9, 9, 24, torch.float32)
    mask = make_mask(2, 9, "random")
    with pytest.warns(UserWarning, match="head dim 24"):
        out = bert_kernels.attention(q, k, v, mask)
    assert_close(out, reference.attention(q, k, v, mask), 2e-5, 1e-5, "fallback")
    with pytest.raises(RuntimeError, match="head dim 24"):
        bert_kernels.attention(q, k, v, mask, impl="triton")


def test_launchers_name_the_limit():
    q = torch.randn(1, 1, 4, 24, device=DEVICE)
    with pytest.raises(ValueError, match="head dim 24 is not one of 16, 32, 64, 128"):
        flash_attention(q, q, q, None, 0.0, None)
    q = torch.randn(1, 1, 4, 16, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype torch.float64"):
        flash_attention(q, q, q, None, 0.0, None)
    with pytest.raises(ValueError, match=r"dropout_p=1.0 is not in \[0, 1\)"):
        flash_attention(q.float(), q.float(), q.float(), None, 1.0, None)
    with pytest.raises(ValueError, match="Tk = 16385 is more than 16384"):
        masked_softmax(torch.zeros(1, 1, 1, 16385, device=DEVICE), None, 1.0, 0.0)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
def test_tiny_bert_trains_identically_through_both_backends(monkeypatch, unpad):
    """The same tiny BERT step (loss and every gradient) with the Triton kernels as with PyTorch,
    through the variable-length kernel (the default for a padded batch) or the padded one."""
    import bert

    torch.manual_seed(0)
    cfg = bert.BertConfig.from_preset("tiny", vocab_size=64, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, unpad=unpad)
    model = bert.BertForPreTraining(cfg).to(DEVICE)
    B, T = 2, 19
    ids = torch.randint(5, 64, (B, T))
    mask = torch.arange(T)[None] < torch.tensor([[T], [7]])
    labels = torch.where(torch.rand(B, T) < 0.3, ids, -100).masked_fill(~mask, -100)
    labels[:, 1] = ids[:, 1]
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), labels=labels,
                 next_sentence_label=torch.tensor([0, 1]))
    batch = {name: x.to(DEVICE) for name, x in batch.items()}                   # on a GPU the kernels run compiled

    def step(backend):
        monkeypatch.setattr(bert_kernels, "BACKEND", backend)
        monkeypatch.setattr(bert_kernels, "_FORCED", True)           # a failure to run Triton must not fall back
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    name = "flash_attention_varlen" if unpad else "flash_attention"
    real = getattr(bert_kernels._triton_attention, name)
    monkeypatch.setattr(bert_kernels._triton_attention, name, lambda *a: calls.append(1) or real(*a))
    loss_torch, grads_torch = step("torch")
    assert not calls
    loss_triton, grads_triton = step("triton")
    assert len(calls) == cfg.num_hidden_layers                    # the kernel really ran, once per layer
    torch.testing.assert_close(loss_triton, loss_torch, atol=1e-5, rtol=1e-5)
    assert grads_triton.keys() == grads_torch.keys()
    for name in grads_torch:
        torch.testing.assert_close(grads_triton[name], grads_torch[name], atol=1e-5, rtol=1e-4, msg=name)
