"""bert.py: shapes, padding invariance, overfitting, and parity with Hugging Face transformers."""
import json

import pytest
import torch

import bert
from bert import BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertModel
from helpers import assert_sparse_head_matches_dense, max_diff, overfit, padded_batch, perturb

transformers = pytest.importorskip("transformers")

V, T = 99, 24


def tiny_config(**kw):
    return BertConfig.from_preset("tiny", vocab_size=V, hidden_size=32, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, **kw)


def batch(B=3, seed=0):
    return {**padded_batch(V, T, B=B, seed=seed), "next_sentence_label": torch.tensor([0, 1, 0])[:B]}


def test_presets_and_config_errors():
    sizes = {n: (c["num_hidden_layers"], c["hidden_size"]) for n, c in BertConfig.PRESETS.items()
             if not n.startswith("crammed")}   # tests/test_crammed.py checks those
    assert sizes == {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
                     "base": (12, 768), "large": (24, 1024)}
    with pytest.raises(ValueError, match="unknown bert preset 'huge'.*tiny"):
        BertConfig.from_preset("huge")
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(hidden_size=100, num_attention_heads=3)
    # BERT-base has 110M parameters with the 30522-token uncased vocabulary (the paper's figure)
    n = BertModel(BertConfig.from_preset("base")).num_parameters()
    assert 109e6 < n < 111e6


def test_shapes():
    torch.manual_seed(0)
    cfg = tiny_config()
    b = batch()
    model = BertForPreTraining(cfg).eval()
    assert BertModel(cfg)(b["input_ids"], b["attention_mask"]).shape == (3, T, 32)
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert out.loss is None and out.logits.shape == (3, T, V) and out.seq_relationship_logits.shape == (3, 2)
    out = model(**b)
    n = int((b["labels"] != -100).sum())
    assert out.logits.shape == (n, V)                        # sparse MLM head: only predicted positions
    assert out.loss.ndim == 0 and set(out.metrics) >= {"mlm_acc", "mlm_loss", "nsp_acc", "nsp_loss"}
    cls = BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    assert cls(b["input_ids"], b["attention_mask"]).logits.shape == (3, 3)


def test_sparse_head_equals_dense_head():
    torch.manual_seed(0)
    assert_sparse_head_matches_dense(BertForMaskedLM(tiny_config()).eval(), batch())


def test_padding_invariance():
    """What sits at padded positions must not change the outputs at real positions."""
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    b = batch()
    h1 = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    ids = b["input_ids"].clone()
    ids[~b["attention_mask"]] = torch.randint(5, V, (int((~b["attention_mask"]).sum()),))
    h2 = model(ids, b["attention_mask"], b["token_type_ids"])
    m = b["attention_mask"]
    torch.testing.assert_close(h1[m], h2[m], atol=1e-5, rtol=1e-5)
    # and a shorter, unpadded row gives the same result as the padded one
    short = model(b["input_ids"][2:, :5], None, b["token_type_ids"][2:, :5])
    torch.testing.assert_close(short[0], h1[2, :5], atol=1e-5, rtol=1e-5)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    first, out = overfit(model, batch(), steps=60, lr=3e-3)
    assert out.loss.item() < 0.1 * first.loss.item()
    assert out.metrics["mlm_acc"] == 1.0 and out.metrics["nsp_acc"] == 1.0


# ----------------------------------------------------------------------------- parity with transformers

def hf_config(num_labels=2):
    return transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)


@pytest.mark.parametrize("hf_cls, ours", [
    ("BertModel", BertModel),
    ("BertForPreTraining", BertForPreTraining),
    ("BertForMaskedLM", BertForMaskedLM),
    ("BertForSequenceClassification", BertForSequenceClassification),
])
def test_parity_hf_to_ours(tmp_path, hf_cls, ours):
    torch.manual_seed(0)
    hf = getattr(transformers, hf_cls)(hf_config()).eval()
    hf.save_pretrained(tmp_path)
    model = ours.from_pretrained(tmp_path).eval()
    b = batch()
    args = (b["input_ids"], b["attention_mask"].long(), b["token_type_ids"])
    with torch.no_grad():
        ref = hf(*args)
        got = model(*args)
    m = b["attention_mask"]
    if ours is BertModel:
        assert max_diff(got[m], ref.last_hidden_state[m]) <= 1e-5
        assert max_diff(model.pooler(got), ref.pooler_output) <= 1e-5
    elif ours is BertForPreTraining:
        assert max_diff(got.logits[m], ref.prediction_logits[m]) <= 1e-5
        assert max_diff(got.seq_relationship_logits, ref.seq_relationship_logits) <= 1e-5
    elif ours is BertForMaskedLM:
        assert max_diff(got.logits[m], ref.logits[m]) <= 1e-5
    else:
        assert max_diff(got.logits, ref.logits) <= 1e-5


@pytest.mark.parametrize("ours, hf_cls", [
    (BertForPreTraining, "BertForPreTraining"),
    (BertModel, "BertModel"),
    (BertForMaskedLM, "BertForMaskedLM"),
])
def test_parity_ours_to_hf(tmp_path, ours, hf_cls):
    torch.manual_seed(1)
    model = ours(tiny_config()).eval()
    perturb(model)                                             # non-trivial values everywhere
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [hf_cls]
    hf = getattr(transformers, hf_cls).from_pretrained(tmp_path).eval()
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long(), b["token_type_ids"])
        got = model(b["input_ids"], m, b["token_type_ids"])
    if ours is BertModel:
        assert max_diff(got[m], ref.last_hidden_state[m]) <= 1e-5
    elif ours is BertForPreTraining:
        assert max_diff(got.logits[m], ref.prediction_logits[m]) <= 1e-5
        assert max_diff(got.seq_relationship_logits, ref.seq_relationship_logits) <= 1e-5
    else:
        assert max_diff(got.logits[m], ref.logits[m]) <= 1e-5


def test_loads_bare_encoder_into_head_and_pytorch_bin(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config()).eval()
    hf.save_pretrained(tmp_path / "st")
    # a pytorch_model.bin written by hand, read with weights_only=True
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pt" / "pytorch_model.bin")
    b = batch()
    with torch.no_grad():
        ref = hf(b["input_ids"], b["attention_mask"].long()).last_hidden_state
        for d in ("st", "pt"):
            got = BertModel.from_pretrained(tmp_path / d).eval()(b["input_ids"], b["attention_mask"])
            assert max_diff(got[b["attention_mask"]], ref[b["attention_mask"]]) <= 1e-5
        # encoder checkpoint into a classifier: the head is fresh, the encoder is loaded
        with pytest.warns(UserWarning, match=r"BertForSequenceClassification: initialised fresh .*\['classifier'\]"):
            cls = BertForSequenceClassification.from_pretrained(tmp_path / "st", num_labels=3)
        assert cls.classifier.out_features == 3
        torch.testing.assert_close(cls.bert.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight)
        # a full pretraining checkpoint into the bare encoder: the heads are left out
        transformers.BertForPreTraining(hf_config()).save_pretrained(tmp_path / "pre")
        BertModel.from_pretrained(tmp_path / "pre")


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match="roberta"):
        BertModel.from_pretrained(tmp_path)
    # a MaskedLM checkpoint lacks the NSP head: strict loading names what is missing
    BertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "mlm")
    with pytest.raises(ValueError, match="(?s)missing.*seq_relationship"):
        BertForPreTraining.from_pretrained(tmp_path / "mlm")
    with pytest.warns(UserWarning, match=r"BertForPreTraining: initialised fresh .*'cls.seq_relationship'"):
        BertForPreTraining.from_pretrained(tmp_path / "mlm", strict=False)
    # another vocabulary size: a shape error that says so
    BertModel(tiny_config()).save_pretrained(tmp_path / "enc")
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    with pytest.raises(ValueError, match="(?s)wrong shape.*word_embeddings"):
        BertModel.from_pretrained(tmp_path / "enc", vocab_size=V + 1)
    assert cfg["model_type"] == "bert"


def test_pretraining_classes():
    assert bert.FAMILY.pretraining == {"mlm+nsp": BertForPreTraining, "mlm": BertForMaskedLM}
    assert bert.FAMILY.default_objective in bert.FAMILY.pretraining


def test_pretraining_checkpoint_loads_into_a_classifier(tmp_path):
    """Fine-tuning starts from a pretraining checkpoint: the MLM/NSP heads are left out, said once."""
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(hf_config())
    hf.save_pretrained(tmp_path)
    # an old-style checkpoint also carries the tied copies of the MLM output matrix and bias
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].clone()
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((tmp_path / "config.json").read_text())
    torch.save(sd, tmp_path / "old" / "pytorch_model.bin")
    for d in (tmp_path, tmp_path / "old"):
        with pytest.warns(UserWarning) as said:
            cls = BertForSequenceClassification.from_pretrained(d, num_labels=2)
        torch.testing.assert_close(cls.bert.pooler.dense.weight, hf.bert.pooler.dense.weight)
        said = " ".join(str(w.message) for w in said)
        assert "classifier" in said and "not used" in said and "cls.predictions" in said
        BertForPreTraining.from_pretrained(d)                       # and strictly into its own class
