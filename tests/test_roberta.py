"""roberta.py: shapes, position ids, padding invariance, overfitting, and parity with Hugging Face transformers."""
import json

import pytest
import torch

import roberta
from helpers import assert_sparse_head_matches_dense, max_diff, overfit, padded_batch, perturb
from roberta import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification, RobertaModel

transformers = pytest.importorskip("transformers")

V, T, PAD = 99, 24, 1


def tiny_config(**kw):
    return RobertaConfig.from_preset("tiny", vocab_size=V, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=T + 2, **kw)


def batch(B=3, seed=0):
    """Right-padded rows of real tokens (ids >= 3) and pad id 1, as a RoBERTa tokenizer makes them."""
    return padded_batch(V, T, pad_id=PAD, lowest_id=3, B=B, seed=seed, segments=False)


def test_presets_and_config():
    sizes = {n: (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["intermediate_size"])
             for n, c in RobertaConfig.PRESETS.items()
             if not n.startswith("crammed")}   # tests/test_crammed.py checks those
    assert sizes == {"tiny": (2, 128, 2, 512), "mini": (4, 256, 4, 1024),
                     "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
    c = RobertaConfig()                                            # roberta-base's config.json
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps, c.pad_token_id) == \
        (50265, 514, 1, 1e-5, 1)
    assert roberta.FAMILY.position_offset == c.pad_token_id + 1
    with pytest.raises(ValueError, match="unknown roberta preset 'huge'.*tiny"):
        RobertaConfig.from_preset("huge")
    with pytest.raises(ValueError, match="not divisible"):
        RobertaConfig(hidden_size=100, num_attention_heads=3)
    # RoBERTa-base: 125M parameters with its 50265-token byte-level BPE vocabulary
    with torch.device("meta"):                                     # sizes only, no memory or init time
        n = RobertaModel(RobertaConfig.from_preset("base")).num_parameters()
    assert 124e6 < n < 126e6


def test_shapes():
    torch.manual_seed(0)
    cfg = tiny_config()
    b = batch()
    model = RobertaModel(cfg).eval()
    assert model(b["input_ids"], b["attention_mask"]).shape == (3, T, 32)
    assert model.pooler(model(b["input_ids"])).shape == (3, 32)
    mlm = RobertaForMaskedLM(cfg).eval()
    assert mlm.roberta.pooler is None
    out = mlm(b["input_ids"], b["attention_mask"])
    assert out.loss is None and out.logits.shape == (3, T, V) and out.metrics == {}
    out = mlm(**b)
    n = int((b["labels"] != -100).sum())
    assert out.logits.shape == (n, V)                          # sparse MLM head: only predicted positions
    assert out.loss.ndim == 0 and set(out.metrics) == {"mlm_acc", "mlm_loss"}
    cls = RobertaForSequenceClassification(tiny_config(num_labels=3)).eval()
    out = cls(b["input_ids"], b["attention_mask"], labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3) and out.loss.ndim == 0 and "acc" in out.metrics
    reg = RobertaForSequenceClassification(tiny_config(num_labels=1)).eval()
    out = reg(b["input_ids"], b["attention_mask"], labels=torch.tensor([0.5, -1.0, 2.0]))
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits[:, 0], torch.tensor([0.5, -1.0, 2.0])))


def test_sparse_head_equals_dense_head():
    torch.manual_seed(0)
    assert_sparse_head_matches_dense(perturb(RobertaForMaskedLM(tiny_config())).eval(), batch())


def test_position_ids():
    emb = RobertaModel(tiny_config()).embeddings
    ids = torch.tensor([[0, 5, 6, 2, PAD, PAD],                    # right padding: pads keep padding_idx
                        [PAD, PAD, 0, 5, 6, 2],                    # left padding: real tokens still count from 2
                        [0, 5, 6, 7, 8, 2]])
    assert emb.make_position_ids(ids).tolist() == [[2, 3, 4, 5, 1, 1], [1, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7]]
    # max_position_embeddings T + 2 holds T tokens, not T + 1
    emb.make_position_ids(torch.full((1, T), 7))
    with pytest.raises(ValueError, match=f"sequence length {T + 1} exceeds {T}: max_position_embeddings {T + 2}"):
        emb.make_position_ids(torch.full((1, T + 1), 7))


def test_padding_invariance():
    """What sits at padded positions, and how much padding there is, must not change real-token outputs."""
    torch.manual_seed(0)
    model = perturb(RobertaModel(tiny_config())).eval()
    b = batch()
    m = b["attention_mask"]
    h1 = model(b["input_ids"], m)
    ids = b["input_ids"].clone()
    ids[~m] = torch.randint(3, V, (int((~m).sum()),))             # garbage after the real tokens
    h2 = model(ids, m)
    torch.testing.assert_close(h1[m], h2[m], atol=1e-5, rtol=1e-5)
    # a shorter, unpadded row gives the same result as the padded one...
    short = model(b["input_ids"][2:, :5])
    torch.testing.assert_close(short[0], h1[2, :5], atol=1e-5, rtol=1e-5)
    # ...and so does the same row padded on the left: its positions start at padding_idx + 1 anyway
    left = torch.cat([torch.full((1, T - 5), PAD), b["input_ids"][2:, :5]], dim=1)
    h3 = model(left, left != PAD)
    torch.testing.assert_close(h3[0, T - 5:], h1[2, :5], atol=1e-5, rtol=1e-5)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = RobertaForMaskedLM(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    first, out = overfit(model, batch(), steps=60, lr=3e-3)
    assert out.loss.item() < 0.1 * first.loss.item()
    assert out.metrics["mlm_acc"] == 1.0


# ----------------------------------------------------------------------------- parity with transformers

def hf_config(num_labels=2):
    return transformers.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=T + 2, type_vocab_size=1,
                                      layer_norm_eps=1e-5, pad_token_id=PAD, num_labels=num_labels)


def compare(ours, got, ref, m):
    """Max abs difference between our output and transformers', at the real tokens (m: (B, T) bool)."""
    if ours is RobertaModel:
        return max_diff(got[m], ref.last_hidden_state[m])
    if ours is RobertaForMaskedLM:
        return max_diff(got.logits[m], ref.logits[m])
    return max_diff(got.logits, ref.logits)


@pytest.mark.parametrize("hf_cls, ours, num_labels", [
    ("RobertaModel", RobertaModel, 2),
    ("RobertaForMaskedLM", RobertaForMaskedLM, 2),
    ("RobertaForSequenceClassification", RobertaForSequenceClassification, 2),
    ("RobertaForSequenceClassification", RobertaForSequenceClassification, 1),
])
def test_parity_hf_to_ours(tmp_path, hf_cls, ours, num_labels):
    torch.manual_seed(0)
    hf = perturb(getattr(transformers, hf_cls)(hf_config(num_labels))).eval()
    hf.save_pretrained(tmp_path)
    model = ours.from_pretrained(tmp_path).eval()
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long())
        got = model(b["input_ids"], m.long())
        assert compare(ours, got, ref, m) <= 1e-5
        if ours is RobertaModel:
            assert max_diff(model.pooler(got), ref.pooler_output) <= 1e-5
        if ours is RobertaForMaskedLM:                         # the sparse head's loss is HF's dense loss
            ref_loss = hf(b["input_ids"], m.long(), labels=b["labels"]).loss
            assert abs(model(b["input_ids"], m, labels=b["labels"]).loss.item() - ref_loss.item()) <= 1e-5


@pytest.mark.parametrize("ours, hf_cls", [
    (RobertaModel, "RobertaModel"),
    (RobertaForMaskedLM, "RobertaForMaskedLM"),
    (RobertaForSequenceClassification, "RobertaForSequenceClassification"),
])
def test_parity_ours_to_hf(tmp_path, ours, hf_cls):
    torch.manual_seed(1)
    model = perturb(ours(tiny_config())).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [hf_cls]
    hf, info = getattr(transformers, hf_cls).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long())
        got = model(b["input_ids"], m)
    assert compare(ours, got, ref, m) <= 1e-5


def published_layout(tmp_path, hf, extra):
    """A pytorch_model.bin as on the Hub: HF's MaskedLM weights (with the tied decoder weight) plus `extra` keys."""
    sd = {**{k: v for k, v in hf.state_dict().items() if k != "lm_head.decoder.bias"}, **extra}
    (tmp_path / "config.json").write_text(hf_config().to_json_string())
    torch.save(sd, tmp_path / "pytorch_model.bin")
    return sd


def test_loads_published_layout_and_pytorch_bin(tmp_path):
    """roberta-base's files: a MaskedLM checkpoint that also holds a pooler, the tied decoder and a buffer."""
    torch.manual_seed(0)
    hf = perturb(transformers.RobertaForMaskedLM(hf_config())).eval()
    sd = published_layout(tmp_path, hf, {
        "roberta.pooler.dense.weight": torch.randn(32, 32), "roberta.pooler.dense.bias": torch.randn(32),
        "roberta.embeddings.position_ids": torch.arange(T + 2)[None]})
    assert "lm_head.decoder.weight" in sd
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long()).logits
        got = RobertaForMaskedLM.from_pretrained(tmp_path).eval()(b["input_ids"], m).logits
        assert max_diff(got[m], ref[m]) <= 1e-5
    enc = RobertaModel.from_pretrained(tmp_path)                               # keeps the checkpoint's pooler
    torch.testing.assert_close(enc.pooler.dense.weight, sd["roberta.pooler.dense.weight"])
    with pytest.warns(UserWarning, match="RobertaForSequenceClassification: initialised fresh"):
        cls = RobertaForSequenceClassification.from_pretrained(tmp_path, num_labels=3)  # heads dropped, classifier fresh
    assert cls.classifier.out_proj.out_features == 3
    torch.testing.assert_close(cls.roberta.embeddings.word_embeddings.weight, hf.roberta.embeddings.word_embeddings.weight)
    # an HF MaskedLM checkpoint has no pooler: the bare encoder gets a fresh one, and says so
    hf.save_pretrained(tmp_path / "mlm")
    with pytest.warns(UserWarning, match=r"RobertaModel: initialised fresh \(not in"):
        RobertaModel.from_pretrained(tmp_path / "mlm")


def test_old_checkpoint_with_the_bias_under_the_decoder(tmp_path):
    """Checkpoints from older transformers may hold the MLM bias only as lm_head.decoder.bias."""
    torch.manual_seed(0)
    hf = perturb(transformers.RobertaForMaskedLM(hf_config())).eval()
    published_layout(tmp_path, hf, {"lm_head.decoder.bias": hf.lm_head.bias.detach().clone() + 1})
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state["lm_head.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = RobertaForMaskedLM.from_pretrained(tmp_path)
    torch.testing.assert_close(model.lm_head.bias, hf.lm_head.bias + 1)


def test_classifier_from_a_checkpoint_with_the_decoder_bias(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.RobertaForMaskedLM(hf_config())).eval()
    published_layout(tmp_path, hf, {"lm_head.decoder.bias": hf.lm_head.bias.detach().clone()})
    with pytest.warns(UserWarning, match=r"initialised fresh .*\['classifier.dense', 'classifier.out_proj'\]"):
        RobertaForSequenceClassification.from_pretrained(tmp_path)


def test_loading_errors(tmp_path):
    bert_config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=64)
    transformers.BertModel(bert_config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert', not 'roberta'.*bert.py"):
        RobertaModel.from_pretrained(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        RobertaModel.from_pretrained(tmp_path)
    # a classifier checkpoint lacks the MLM head: strict loading names what is missing
    RobertaForSequenceClassification(tiny_config()).save_pretrained(tmp_path / "cls")
    with pytest.raises(ValueError, match="(?s)missing.*lm_head"):
        RobertaForMaskedLM.from_pretrained(tmp_path / "cls")
    with pytest.warns(UserWarning) as said:
        RobertaForMaskedLM.from_pretrained(tmp_path / "cls", strict=False)
    said = " ".join(str(w.message) for w in said)
    assert "initialised fresh" in said and "'lm_head.dense'" in said and "not used" in said and "'classifier.dense'" in said
    with pytest.raises(ValueError, match="(?s)wrong shape.*word_embeddings"):
        RobertaModel.from_pretrained(tmp_path / "cls", vocab_size=V + 1)


def test_pretraining_contract():
    assert roberta.FAMILY.pretraining == {"mlm": RobertaForMaskedLM}
    assert roberta.FAMILY.default_objective in roberta.FAMILY.pretraining
    assert (roberta.FAMILY.tokenizer_kind, roberta.FAMILY.packed) == ("bpe", True)
