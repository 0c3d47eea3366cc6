"""torch.compile: every family compiles to the numbers eager gives; the Triton attention is one op.

  * each family's pretraining model (the class train.py builds for the default objective),
    compiled, gives the loss and the gradients of eager, on a batch without padding and on one
    with padding. The graph breaks are counted with torch._dynamo.explain and must be exactly the
    documented ones (GRAPH_BREAKS below): a new break makes the test fail;
  * each family compiles with fullgraph=True (no break at all) once boolean-mask indexing may
    produce a data-dependent size (capture_dynamic_output_shape_ops, as train.py --compile sets);
  * the Triton attention (dense with a key-padding mask, and variable length) is registered with
    torch.library.custom_op (bert_kernels/attention.py): compiled with fullgraph=True it is ONE node
    with no graph break, and gives eager's output and gradients, dropout included (the seed is an
    input of the op). torch.library.opcheck checks the four operators' fake implementations,
    schemas and autograd registration.

Backends: the model comparisons use backend="aot_eager" (Dynamo + AOTAutograd + functionalization
+ the fake implementations, no code generation): Inductor works on this CPU machine (it needs a C++
compiler) but costs ~20 s per graph here, which four families x two batches x forward and
backward cannot afford in a unit test. Inductor itself is run once, on the custom op. On a CPU the
Triton kernels run under the interpreter (tests/conftest.py), so the op tests use tiny shapes.
"""
import importlib
import shutil

import pytest
import torch
import torch._dynamo

import bert_kernels
from helpers import padded_batch

V, T = 99, 16
SIZES = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)
# family -> (config class, pretraining class, config overrides, extra batch entries for B = 3)
FAMILIES = {
    "bert": ("BertConfig", "BertForPreTraining", {}, {"next_sentence_label": [0, 1, 0]}),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(max_position_embeddings=66), {}),
    "albert": ("AlbertConfig", "AlbertForPreTraining", dict(embedding_size=16), {"sentence_order_label": [0, 1, 0]}),
    "electra": ("ElectraConfig", "Electra", dict(embedding_size=16, generator_size=0.5), {}),
}
# Graph breaks of the compiled pretraining step, as torch._dynamo.explain counts them, with the
# setting train.py --compile uses (capture_dynamic_output_shape_ops: the MLM head's gather of the
# masked positions has a size known only at run time). Compiled, the models take the dense path
# even with padding (unpadding's nonzero() / .item() would break the graph), so there is none.
GRAPH_BREAKS = {(family, padded): 0 for family in FAMILIES for padded in (False, True)}


def build(family):
    config_name, class_name, overrides, _ = FAMILIES[family]
    mod = importlib.import_module(family)
    config = getattr(mod, config_name)(**{**SIZES, **overrides})
    torch.manual_seed(0)
    return getattr(mod, class_name)(config)


def batch(family, model, padded):
    """B = 3 rows of lengths T, T - 7, 5 (padded), or the first row alone (no padding at all)."""
    b = padded_batch(V, T, pad_id=model.config.pad_token_id, B=3, segments=family != "roberta")
    b.update({k: torch.tensor(v) for k, v in FAMILIES[family][3].items()})
    if not padded:
        b = {k: v[:1] for k, v in b.items()}
        assert b["attention_mask"].all()
    return b


def loss_and_grads(model, b, seed=1):
    """Loss and the gradient of every parameter; the seed fixes ELECTRA's sampling."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**b).loss
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.clone()
                           for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(model, compiled, b):
    loss, grads = loss_and_grads(model, b)
    loss_c, grads_c = loss_and_grads(compiled, b)
    torch.testing.assert_close(loss_c, loss, atol=1e-5, rtol=1e-5)
    assert grads_c.keys() == grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


# -------------------------------------------------------------------------------------------------
# Every family, compiled
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "padding"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_family_matches_eager(family, padded):
    model = build(family)
    b = batch(family, model, padded)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        explained = torch._dynamo.explain(model)(**b)
        reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
        assert explained.graph_break_count == GRAPH_BREAKS[family, padded], reasons
        torch._dynamo.reset()
        assert_same_step(model, torch.compile(model, backend="aot_eager"), b)
    # without that setting the head's gather is the one place a graph breaks, never the attention
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(**b)
    assert explained.graph_break_count > 0
    assert not any("attention" in f.filename or "kernels" in f.filename
                   for r in explained.break_reasons for f in r.user_stack)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fullgraph_without_padding(family):
    """No mask (the dense path) and data-dependent sizes captured: the whole step is one graph."""
    model = build(family)
    b = batch(family, model, padded=False)
    b["attention_mask"] = None
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert_same_step(model, compiled, b)


# -------------------------------------------------------------------------------------------------
# The Triton attention as a custom op (under the interpreter on a CPU)
# -------------------------------------------------------------------------------------------------
needs_triton = pytest.mark.skipif(bert_kernels._triton_unavailable() is not None,
                                  reason=f"Triton backend unavailable: {bert_kernels._triton_unavailable()}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, TQ, D = 1, 2, 32, 16


def qkv(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]


def dense_case():
    q, k, v = qkv((B, H, TQ, D))
    mask = (torch.arange(TQ) < 21)[None].to(DEVICE)                           # (1, T): 11 padded keys
    return (lambda q, k, v, p: bert_kernels.attention(q, k, v, key_padding_mask=mask, dropout_p=p, impl="triton"),
            (q, k, v), "flash_attention_fwd")


def varlen_case():
    q, k, v = qkv((29, H, D))                                                 # sequences of 20 and 9
    cu_seqlens = torch.tensor([0, 20, 29], dtype=torch.int32, device=DEVICE)
    return (lambda q, k, v, p: bert_kernels.attention_varlen(q, k, v, cu_seqlens, 20, dropout_p=p, impl="triton"),
            (q, k, v), "flash_attention_varlen_fwd")


def run(fn, inputs, p, seed=5):
    torch.manual_seed(seed)
    out = fn(*inputs, p)
    grad_out = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)
    return out.detach(), torch.autograd.grad(out, inputs, grad_out)


@needs_triton
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("case", [dense_case, varlen_case], ids=["dense", "varlen"])
def test_triton_attention_is_one_op_under_compile(case, dropout_p):
    fn, inputs, op = case()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*inputs, dropout_p)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    code = explained.graphs[0].code
    assert code.count(f"torch.ops.bertfamily.{op}") == 1, code                # one opaque node, no Triton inside
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, grads = run(fn, inputs, dropout_p)
    out_c, grads_c = run(compiled, inputs, dropout_p)
    torch.testing.assert_close(out_c, out, atol=1e-6, rtol=1e-6)              # same seed drawn: same dropout
    for name, a, b in zip("qkv", grads_c, grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=f"d{name}")
    if dropout_p > 0:
        assert not torch.equal(out, run(fn, inputs, dropout_p, seed=6)[0])    # the seed does matter


@needs_triton
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="Inductor on a CPU needs a C++ compiler")
def test_triton_attention_under_inductor():
    """The real compiler: the op stays an extern call between Inductor's kernels."""
    fn, inputs, _ = dense_case()
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    out, grads = run(fn, inputs, 0.0)
    out_c, grads_c = run(compiled, inputs, 0.0)
    torch.testing.assert_close(out_c, out, atol=1e-6, rtol=1e-6)
    for name, a, b in zip("qkv", grads_c, grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=f"d{name}")


@needs_triton
def test_opcheck_custom_ops():
    """Schema, fake (meta) implementation vs the real one, autograd registration, AOT dispatch."""
    ka = bert_kernels._triton_attention                      # the module (bert_kernels.attention is the function)
    q, k, v = (x.detach().requires_grad_() for x in qkv((B, H, TQ, D)))
    mask = (torch.arange(TQ) < 21)[None].to(DEVICE)
    keep, key_end = ka._mask_args(mask, B, TQ, q.device)
    seed = torch.tensor([7])
    torch.library.opcheck(ka._flash_fwd_op, (q, k, v, keep, key_end, True, 0.2, 0.25, seed))
    o, lse = ka._flash_fwd_op(q, k, v, keep, key_end, True, 0.2, 0.25, seed)
    q, k, v, o = (x.detach() for x in (q, k, v, o))              # the backward ops are not differentiable
    torch.library.opcheck(ka._flash_bwd_op, (torch.randn_like(o), q, k, v, o, lse, keep, key_end, True, 0.2, 0.25,
                                             seed))

    q, k, v = (x.detach().requires_grad_() for x in qkv((29, H, D)))
    cu_seqlens = torch.tensor([0, 20, 29], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(ka._varlen_fwd_op, (q, k, v, cu_seqlens, 20, 0.2, 0.25, seed))
    o, lse = ka._varlen_fwd_op(q, k, v, cu_seqlens, 20, 0.2, 0.25, seed)
    q, k, v, o = (x.detach() for x in (q, k, v, o))
    torch.library.opcheck(ka._varlen_bwd_op, (torch.randn_like(o), q, k, v, o, lse, cu_seqlens, 20, 0.2, 0.25, seed))
