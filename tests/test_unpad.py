"""Unpadding and packing: the (total, H) layout with cu_seqlens, and bert_kernels.attention_varlen.

  * every family: a padded batch run on its real tokens only (config.unpad, the default) gives
    the same outputs at the real positions and the same gradients for every parameter as the
    dense padded path (config.unpad = False);
  * packing: documents laid side by side in one row with `document_ids` give the outputs each
    document gets alone;
  * the last layer's feed-forward on the positions the heads read only (`keep`): every pretraining
    model's loss and gradients equal those of the same model computing every position;
  * bert_kernels.Layout and bert_kernels.self_attention: the layout decided once per batch, gathered into and
    padded back, one attention call for both layouts;
  * attention_varlen: the PyTorch fallback, the reference twin (a loop over the sequences) and,
    where the Triton backend can run (compiled on a GPU, under the interpreter on a CPU), the Triton
    kernel agree, forward and backward, on odd lengths.

A test that runs the Triton backend puts its tensors on DEVICE: the GPU where there is one (conftest.py
sets TRITON_INTERPRET only without one, so the kernels run compiled and take CUDA tensors only), else the CPU.
"""
import dataclasses
import importlib

import pytest
import torch

import bert_kernels
from bert_kernels import reference

TRITON = bert_kernels._triton_unavailable() is None
needs_triton = pytest.mark.skipif(not TRITON, reason=f"Triton backend unavailable: {bert_kernels._triton_unavailable()}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"     # where the Triton backend runs (module docstring)
V, T = 99, 40
SIZES = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# family -> (module, config overrides, base model, MLM head model, its attribute holding the base model)
FAMILIES = {
    "bert": ("bert", dict(max_position_embeddings=64), "BertModel", "BertForPreTraining", "bert"),
    "roberta": ("roberta", dict(max_position_embeddings=66), "RobertaModel", "RobertaForMaskedLM", "roberta"),
    "albert": ("albert", dict(max_position_embeddings=64, embedding_size=16, classifier_dropout_prob=0.0), "AlbertModel",
               "AlbertForPreTraining", "albert"),
    "electra": ("electra", dict(max_position_embeddings=64, embedding_size=16), "ElectraModel",
                "ElectraForMaskedLM", "electra"),
}


def build(family, head=False, seed=0):
    module, extra, base, mlm, _ = FAMILIES[family]
    mod = importlib.import_module(module)
    config_cls = mod.FAMILY.config
    config = config_cls(**SIZES, **extra)
    torch.manual_seed(seed)
    model = getattr(mod, mlm if head else base)(config)
    with torch.no_grad():                        # non-trivial biases and norms, so a mix-up shows
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model, mod


def varied_batch(lengths, pad_id, T=T, seed=0):
    """Right-padded rows of the given lengths (ids >= 5, never the pad id), token types 0 then 1, MLM labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    mask = torch.arange(T)[None] < lengths[:, None]                                  # (B, T)
    ids = torch.randint(5, V, (len(lengths), T), generator=g).masked_fill(~mask, pad_id)
    types = ((torch.arange(T)[None] >= (lengths // 2)[:, None]) & mask).long()
    labels = torch.where(mask & (torch.rand(mask.shape, generator=g) < 0.3), ids, -100)
    labels[:, 0] = ids[:, 0]                                                         # at least one per row
    return ids, mask, types, labels


class CountVarlen:
    """Counts the calls of bert_kernels.attention_varlen (to know which path a model ran)."""

    def __init__(self, monkeypatch, mod=None):
        self.calls = 0
        original = bert_kernels.attention_varlen

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(bert_kernels, "attention_varlen", counted)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------- unpadded == padded

@pytest.mark.parametrize("family", FAMILIES)
def test_unpadded_equals_padded_outputs_and_gradients(family, monkeypatch):
    model, mod = build(family, head=True)
    model.train()                                  # dropout is 0: train mode, to go through every branch
    pad_id = model.config.pad_token_id
    ids, mask, types, labels = varied_batch([T, 23, 5, 1, 17], pad_id)
    types = types.clamp(max=model.config.type_vocab_size - 1)                        # RoBERTa has one type
    count = CountVarlen(monkeypatch, mod)
    results = {}
    for unpad in (False, True):
        model.config.unpad = unpad
        model.zero_grad()
        base = getattr(model, FAMILIES[family][4])
        h = base(ids, mask, types)                                                     # (B, T, H)
        extra = {"bert": dict(next_sentence_label=torch.tensor([0, 1, 1, 0, 1])),
                 "albert": dict(sentence_order_label=torch.tensor([1, 0, 0, 1, 1]))}.get(family, {})
        out = model(ids, mask, types, labels=labels, **extra)                          # loss: every head
        w = torch.randn(h.shape, generator=torch.Generator().manual_seed(3))
        ((h * w)[mask].sum() + out.loss).backward()
        results[unpad] = (h.detach(), out.loss.detach(), out.logits.detach(), grads(model))
        assert (count.calls > 0) == unpad, "the unpadded path must go through attention_varlen, the dense one not"
    (h0, loss0, logits0, g0), (h1, loss1, logits1, g1) = results[False], results[True]
    torch.testing.assert_close(h1[mask], h0[mask], atol=1e-5, rtol=1e-5)
    assert (h1[~mask] == 0).all()                                    # padding positions hold zeros
    torch.testing.assert_close(loss1, loss0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) == len(list(model.parameters()))
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_no_padding_takes_the_dense_path(monkeypatch):
    model, mod = build("bert")
    count = CountVarlen(monkeypatch, mod)
    ids, mask, types, _ = varied_batch([T, T], 0)
    model.eval()(ids, mask, types)
    model(ids)
    assert count.calls == 0
    model(ids, mask.masked_fill(torch.arange(T) >= 30, False), types)
    assert count.calls == model.config.num_hidden_layers


def test_left_padding_and_empty_rows():
    """RoBERTa counts positions over real tokens, so left padding is fine; a row with no real token gives zeros."""
    model, _ = build("roberta")
    model.eval()
    ids, mask, types, _ = varied_batch([T, 9, 0], 1)
    with torch.no_grad():
        h = model(ids, mask)
        model.config.unpad = False
        dense = model(ids, mask)
        left = model(ids[1:2].roll(T - 9, 1), mask[1:2].roll(T - 9, 1))
        model.config.unpad = True
        left_unpadded = model(ids[1:2].roll(T - 9, 1), mask[1:2].roll(T - 9, 1))
    torch.testing.assert_close(h[:2][mask[:2]], dense[:2][mask[:2]], atol=1e-5, rtol=1e-5)
    assert (h[2] == 0).all()
    torch.testing.assert_close(left_unpadded[0, T - 9:], left[0, T - 9:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left_unpadded[0, T - 9:], h[1, :9], atol=1e-5, rtol=1e-5)


def test_unpad_stays_out_of_config_json(tmp_path):
    """`unpad` says how to run, not what the weights are: not written, but accepted when given."""
    model, mod = build("bert")
    assert "unpad" not in model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert mod.BertModel.from_pretrained(tmp_path).config.unpad is True
    assert mod.BertModel.from_pretrained(tmp_path, unpad=False).config.unpad is False
    with pytest.raises(ValueError, match="unpad should be bool"):
        mod.BertConfig.from_dict({**model.config.to_dict(), "unpad": "yes"})


def test_unpad_helper_layout():
    from bert_kernels import unpad
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]]).bool()
    docs = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 7, 7, 8]])
    layout = unpad(mask)
    assert layout.indices.tolist() == [0, 1, 2, 9, 10, 11]
    assert layout.cu_seqlens.tolist() == [0, 3, 6] and layout.cu_seqlens.dtype == torch.int32
    assert layout.max_seqlen == 3
    layout = unpad(mask, docs)
    assert layout.cu_seqlens.tolist() == [0, 2, 3, 5, 6] and layout.max_seqlen == 2
    assert unpad(torch.zeros(2, 3, dtype=torch.bool)).cu_seqlens.tolist() == [0, 0]


# ----------------------------------------------------------------------------- packing

def test_layout_is_decided_once_from_the_batch():
    """bert_kernels.Layout.of: padded when there is no padding (and no mask then), or when unpadding is off;
    unpadded for a padded batch or for packed documents, with the document starts for the positions."""
    ids = torch.zeros(2, 5, dtype=torch.long)
    full, padded = torch.ones(2, 5, dtype=torch.bool), torch.arange(5)[None] < torch.tensor([[5], [2]])
    assert bert_kernels.Layout.of(ids) == ((2, 5), None, None, None)
    assert bert_kernels.Layout.of(ids, full.int()).mask is None                             # no padding: no mask
    layout = bert_kernels.Layout.of(ids, padded, unpad_padding=False)
    assert layout.unpadded is None and torch.equal(layout.mask, padded)
    layout = bert_kernels.Layout.of(ids, padded)
    assert layout.mask is None and layout.unpadded.cu_seqlens.tolist() == [0, 5, 7] and layout.starts is None
    docs = torch.tensor([[0, 0, 1, 1, 1], [3, 4, 4, 4, 4]])
    layout = bert_kernels.Layout.of(ids, None, docs, unpad_padding=False)                   # packing always unpads
    assert layout.unpadded.cu_seqlens.tolist() == [0, 2, 5, 6, 10]
    assert layout.starts.tolist() == [[True, False, True, False, False], [True, True, False, False, False]]


def test_layout_gather_then_pad_puts_every_real_token_back():
    mask = torch.arange(6)[None] < torch.tensor([[6], [3], [0]])                       # (3, 6), an empty row
    layout = bert_kernels.Layout.of(torch.zeros(3, 6, dtype=torch.long), mask)
    ids = torch.arange(18).view(3, 6)
    assert layout.gather(ids).tolist() == ids[mask].tolist() and layout.gather(None) is None
    assert layout.gather(torch.arange(6)[None]).tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2]     # (1, T) broadcast
    x = torch.randn(3, 6, 4)
    back = layout.pad(x[mask])                                                          # (total, 4) -> (3, 6, 4)
    assert torch.equal(back[mask], x[mask]) and (back[~mask] == 0).all()


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_self_attention_takes_both_layouts(impl):
    """bert_kernels.self_attention on (B, T, H, D) with a padded layout and on (total, H, D) with an unpadded one:
    both give bert_kernels.reference.attention's numbers at the real positions."""
    if impl == "triton" and not TRITON:
        pytest.skip(bert_kernels._triton_unavailable())
    device = DEVICE if impl == "triton" else "cpu"
    g = torch.Generator().manual_seed(0)
    B, T, H, D = 3, 9, 2, 16
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(device) for _ in range(3))
    mask = (torch.arange(T)[None] < torch.tensor([[9], [4], [1]])).to(device)
    want = reference.attention(*(x.transpose(1, 2) for x in (q, k, v)), key_padding_mask=mask).transpose(1, 2)
    ids = torch.zeros(B, T, dtype=torch.long, device=device)
    padded = bert_kernels.self_attention(q, k, v, bert_kernels.Layout.of(ids, mask, unpad_padding=False), impl=impl)
    torch.testing.assert_close(padded[mask], want[mask], atol=1e-5, rtol=1e-5)
    layout = bert_kernels.Layout.of(ids, mask)
    unpadded = bert_kernels.self_attention(q[mask], k[mask], v[mask], layout, impl=impl)   # (total, H, D)
    torch.testing.assert_close(unpadded, want[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_equal_documents_alone(family):
    model, _ = build(family)
    model.eval()
    pad_id = model.config.pad_token_id
    g = torch.Generator().manual_seed(5)
    rows = [[7, 3, 11], [1, 14], [20]]                              # document lengths in each row
    docs = [[torch.randint(5, V, (n,), generator=g) for n in row] for row in rows]
    top = model.config.type_vocab_size - 1                            # RoBERTa has one type
    types = [[(torch.arange(n) >= n // 2).long().clamp(max=top) for n in row] for row in rows]
    width = 24
    ids = torch.full((len(rows), width), pad_id)
    tt = torch.zeros(len(rows), width, dtype=torch.long)
    doc_ids = torch.full((len(rows), width), -1)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(docs):
        at = 0
        for d, doc in enumerate(row):
            ids[r, at:at + len(doc)], tt[r, at:at + len(doc)] = doc, types[r][d]
            doc_ids[r, at:at + len(doc)], mask[r, at:at + len(doc)] = d, True
            at += len(doc)
    with torch.no_grad():
        packed = model(ids, mask, tt, document_ids=doc_ids)                              # (3, width, H)
        crossing = model(ids, mask, tt)                                                    # documents see each other
        for r, row in enumerate(docs):
            at = 0
            for d, doc in enumerate(row):
                alone = model(doc[None], None, types[r][d][None])[0]                      # (n, H)
                torch.testing.assert_close(packed[r, at:at + len(doc)], alone, atol=1e-5, rtol=1e-5)
                at += len(doc)
    assert (packed[~mask] == 0).all()
    assert (crossing[0, 7:10] - packed[0, 7:10]).abs().max() > 1e-3   # without document_ids they mix
    # a row holding one document is the same with or without document_ids
    torch.testing.assert_close(packed[2], crossing[2], atol=1e-5, rtol=1e-5)


def test_packed_pretraining_loss_and_gradients_flow():
    """Packed rows through a head with labels: a finite loss and gradients reach the embeddings."""
    model, _ = build("electra", head=True)
    ids, mask, types, labels = varied_batch([30, 30], 0)
    doc_ids = (torch.arange(T) >= 12).long().expand(2, T)
    out = model(ids, mask, types, labels=labels, document_ids=doc_ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.electra.embeddings.position_embeddings.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the last layer computes what is read

LAYERS = {"bert": "BertLayer", "roberta": "RobertaLayer", "albert": "AlbertLayer", "electra": "ElectraLayer"}


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "dense"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_layer_skipping_unread_positions_changes_nothing(family, unpad, monkeypatch):
    """With labels, the pretraining models ask the last layer for the masked positions (and [CLS]) only.
    Loss, metrics and every gradient equal those of the model made to compute all positions, and the
    base model's output is the full output at the kept positions and zeros elsewhere."""
    model, mod = build(family)
    mod_layer = getattr(mod, LAYERS[family])
    ids, mask, types, labels = varied_batch([40, 23, 9], model.config.pad_token_id)
    types = types.clamp(max=model.config.type_vocab_size - 1)                  # RoBERTa has one type
    for cls in mod.FAMILY.pretraining.values():
        torch.manual_seed(0)
        m = cls(dataclasses.replace(model.config, unpad=unpad))
        batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        if cls.__name__ == "BertForPreTraining":
            batch["next_sentence_label"] = torch.tensor([0, 1, 0])
        if cls.__name__ == "AlbertForPreTraining":
            batch["sentence_order_label"] = torch.tensor([0, 1, 0])

        def run():
            m.zero_grad()
            torch.manual_seed(1)                                      # ELECTRA's sampling: the same draws
            out = m(**batch)
            out.loss.backward()
            return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

        calls = []
        forward = mod_layer.forward
        monkeypatch.setattr(mod_layer, "forward", lambda self, x, am=None, keep=None: (
            calls.append(keep is not None), forward(self, x, am, keep))[1])
        got, got_grads = run()
        assert any(calls), f"{cls.__name__}: no layer was asked for a subset"
        monkeypatch.setattr(mod_layer, "forward", lambda self, x, am=None, keep=None: forward(self, x, am, None))
        want, want_grads = run()
        monkeypatch.setattr(mod_layer, "forward", forward)
        torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=1e-6)
        for k in want.metrics:
            torch.testing.assert_close(got.metrics[k], want.metrics[k], atol=1e-6, rtol=1e-6)
        assert got_grads.keys() == want_grads.keys()
        for n in want_grads:
            torch.testing.assert_close(got_grads[n], want_grads[n], atol=1e-6, rtol=1e-5, msg=lambda e: f"{n}: {e}")
    base = getattr(mod, FAMILIES[family][2])(dataclasses.replace(model.config, unpad=unpad)).eval()
    keep = labels != -100
    with torch.no_grad():
        full, part = base(ids, mask, types), base(ids, mask, types, keep=keep)
    torch.testing.assert_close(part[keep], full[keep], atol=1e-6, rtol=1e-6)
    assert (part[~keep] == 0).all() and (full[~keep & mask] != 0).any()


# ----------------------------------------------------------------------------- attention_varlen

LENGTHS = [[1, 5, 17, 33], [7], [33, 1, 1], [70, 3]]


def make_varlen(lengths, H, D, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, H, D, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0).to(device, torch.int32)
    return q, k, v, cu, max(lengths)


def run(fn, q, k, v, grad_out):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_varlen_torch_fallback_matches_reference(lengths):
    q, k, v, cu, tmax = make_varlen(lengths, 2, 16, torch.float32)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))
    want = run(lambda *x: reference.attention_varlen(*x, cu, tmax), q, k, v, grad_out)
    got = run(lambda *x: bert_kernels.attention_varlen(*x, cu, tmax, impl="torch"), q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_varlen_reference_equals_padded_attention():
    """The twin: sequence by sequence, the same numbers as the padded batch with a key-padding mask."""
    lengths = [1, 5, 17, 33]
    q, k, v, cu, tmax = make_varlen(lengths, 2, 16, torch.float32)
    got = reference.attention_varlen(q, k, v, cu, tmax)
    mask = torch.arange(tmax)[None] < torch.tensor(lengths)[:, None]                  # (S, Tmax)
    padded = [torch.zeros(len(lengths), tmax, 2, 16).index_put_(torch.where(mask), x) for x in (q, k, v)]
    dense = reference.attention(*(x.transpose(1, 2) for x in padded), key_padding_mask=mask)  # (S, H, Tmax, D)
    torch.testing.assert_close(got, dense.transpose(1, 2)[mask], atol=1e-6, rtol=1e-6)


def test_varlen_checks_its_arguments():
    q, k, v, cu, tmax = make_varlen([3, 4], 2, 16, torch.float32)
    with pytest.raises(ValueError, match="total, H, D"):
        bert_kernels.attention_varlen(q[None], k, v, cu, tmax)
    with pytest.raises(ValueError, match="cu_seqlens"):
        bert_kernels.attention_varlen(q, k, v, cu.float(), tmax)
    with pytest.raises(ValueError, match="max_seqlen"):
        bert_kernels.attention_varlen(q, k, v, cu, torch.tensor(4))


def test_varlen_dropout_keeps_expectation():
    """With dropout, E[out] is the output without it (each probability scaled by 1 / (1 - p))."""
    q, k, v, cu, tmax = make_varlen([9, 4], 1, 16, torch.float32)
    torch.manual_seed(0)
    mean = torch.stack([bert_kernels.attention_varlen(q, k, v, cu, tmax, dropout_p=0.3, impl="torch")
                        for _ in range(400)]).mean(0)
    exact = reference.attention_varlen(q, k, v, cu, tmax)
    assert (mean - exact).abs().max() < 0.15 and not torch.equal(mean, exact)



@needs_triton
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 2e-5, 1e-5), (torch.float16, 1e-2, 5e-3)],
                         ids=["fp32", "fp16"])
@pytest.mark.parametrize("lengths, D", [([1, 5, 17, 33], 16), ([70, 3], 32), ([64], 16)], ids=str)
def test_varlen_triton_matches_reference_and_fallback(lengths, D, dtype, atol, rtol):
    q, k, v, cu, tmax = make_varlen(lengths, 2, D, dtype, device=DEVICE)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    got = run(lambda *x: bert_kernels.attention_varlen(*x, cu, tmax, impl="triton"), q, k, v, grad_out)
    # the reference in float64 from the same (rounded) inputs
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = run(lambda *x: reference.attention_varlen(*x, cu, tmax), q64, k64, v64, grad_out.double())
    fallback = run(lambda *x: bert_kernels.attention_varlen(*x, cu, tmax, impl="torch"),
                   *(x.detach().float().requires_grad_() for x in (q, k, v)), grad_out.float())
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, want, fallback):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(c.double(), b, atol=atol, rtol=rtol, msg=lambda m: f"{name} (torch): {m}")


@needs_triton
def test_varlen_triton_dropout_same_seed_same_result():
    q, k, v, cu, tmax = make_varlen([5, 17], 2, 16, torch.float32, device=DEVICE)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(bert_kernels.attention_varlen(q, k, v, cu, tmax, dropout_p=0.5, impl="triton"))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], reference.attention_varlen(q, k, v, cu, tmax))


@needs_triton
def test_tiny_bert_unpadded_through_triton_equals_torch(monkeypatch):
    """The model's unpadded path on the Triton kernel: same outputs and gradients as on PyTorch."""
    import bert
    config = bert.BertConfig(**{**SIZES, "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1},
                             max_position_embeddings=64)
    torch.manual_seed(0)
    model = bert.BertModel(config).to(DEVICE)
    ids, mask, types = (x.to(DEVICE) for x in varied_batch([20, 7, 1], 0, T=24)[:3])
    results = []
    original = bert_kernels.attention_varlen
    for impl in ("torch", "triton"):
        monkeypatch.setattr(bert_kernels, "attention_varlen", lambda *a, impl=impl, **kw: original(*a, impl=impl, **kw))
        model.zero_grad()
        h = model(ids, mask, types)
        h[mask].square().sum().backward()
        results.append((h.detach(), grads(model)))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
