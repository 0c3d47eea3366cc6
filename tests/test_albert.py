"""albert.py: sizes, weight sharing, shapes, padding invariance, overfitting, and parity with transformers."""
import json

import pytest
import torch

import albert
import bert_kernels
from helpers import assert_sparse_head_matches_dense, max_diff, overfit, padded_batch, perturb
from albert import (AlbertConfig, AlbertForMaskedLM, AlbertForPreTraining, AlbertForSequenceClassification,
                    AlbertModel)

transformers = pytest.importorskip("transformers")

V, T = 99, 24
# non-default structure so that the parameter mapping is really exercised: E != H, two groups of
# two layers each, four layer steps (HF's assignment: steps 0, 1 -> group 0; steps 2, 3 -> group 1)
SIZES = dict(vocab_size=V, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)


def tiny_config(**kw):
    return AlbertConfig.from_preset("tiny", **{**SIZES, **kw})


def batch(B=3, seed=0):
    return {**padded_batch(V, T, B=B, seed=seed), "sentence_order_label": torch.tensor([0, 1, 1])[:B]}


def test_presets_and_config_errors():
    sizes = {n: (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"])
             for n, c in AlbertConfig.PRESETS.items()
             if not n.startswith("crammed")}   # tests/test_crammed.py checks those
    assert sizes == {"tiny": (2, 128, 2), "mini": (4, 256, 4), "base": (12, 768, 12), "large": (24, 1024, 16),
                     "xlarge": (24, 2048, 16), "xxlarge": (12, 4096, 64)}
    for name in AlbertConfig.PRESETS:
        cfg = AlbertConfig.from_preset(name)
        assert (cfg.embedding_size, cfg.vocab_size, cfg.num_hidden_groups) == (128, 30000, 1)
        assert cfg.hidden_act == "gelu_new"
        assert cfg.hidden_dropout_prob == cfg.attention_probs_dropout_prob == 0.0     # v2: no dropout
    with pytest.raises(ValueError, match="unknown albert preset 'huge'.*tiny"):
        AlbertConfig.from_preset("huge")
    with pytest.raises(ValueError, match="not divisible"):
        AlbertConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="num_hidden_groups 5"):
        AlbertConfig.from_preset("tiny", num_hidden_groups=5)
    # the dataclass defaults are transformers' own, so a config.json that omits a key loads the same
    hf = transformers.AlbertConfig()
    for k, v in AlbertConfig().to_dict().items():
        if k not in ("id2label", "label2id"):
            assert getattr(hf, k) == v, k


# Table 1 of the paper (30000-token vocabulary, E = 128). The paper rounds; transformers' model cards
# give 11M / 17M / 58M / 223M. The exact counts below are transformers' AlbertModel counts.
PAPER = {"base": (11_683_584, 12e6), "large": (17_683_968, 18e6),
         "xlarge": (58_724_864, 60e6), "xxlarge": (222_595_584, 235e6)}


def hf_sized(cfg):
    kw = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id", "model_type")}
    return transformers.AlbertModel(transformers.AlbertConfig(**kw))


@pytest.mark.parametrize("name", PAPER)
def test_parameter_counts(name):
    exact, paper = PAPER[name]
    cfg = AlbertConfig.from_preset(name)
    with torch.device("meta"):                                  # no memory, no init time
        n = AlbertModel(cfg).num_parameters()
        n_hf = hf_sized(cfg).num_parameters()
    assert n == n_hf == exact
    assert abs(n - paper) / paper < (0.06 if name == "xxlarge" else 0.03)   # the paper's xxlarge 235M is high


def test_parameter_count_without_sharing():
    # Table 4 of the paper: ALBERT-base with E = 128 has 89M parameters not shared, 12M all-shared
    cfg = AlbertConfig.from_preset("base", num_hidden_groups=12)
    with torch.device("meta"):
        n = AlbertModel(cfg).num_parameters()
        assert n == hf_sized(cfg).num_parameters()
    assert abs(n - 89e6) / 89e6 < 0.01


def test_layers_share_weights():
    # depth costs no parameters: one group of one layer, however many steps
    n = {L: AlbertModel(tiny_config(num_hidden_layers=L, num_hidden_groups=1, inner_group_num=1)).num_parameters()
         for L in (1, 4, 12)}
    assert n[1] == n[4] == n[12]
    model = AlbertModel(tiny_config()).eval()
    assert len(model.encoder.albert_layer_groups) == 2
    assert all(len(g.albert_layers) == 2 for g in model.encoder.albert_layer_groups)
    # which group each step runs: transformers' int(i / (num_hidden_layers / num_hidden_groups))
    for L, G, expected in [(4, 2, [0, 0, 1, 1]), (5, 3, [0, 0, 1, 1, 2]), (6, 4, [0, 0, 1, 2, 2, 3]),
                           (3, 1, [0, 0, 0]), (3, 3, [0, 1, 2])]:
        m = AlbertModel(tiny_config(num_hidden_layers=L, num_hidden_groups=G)).eval()
        calls = []
        for g, group in enumerate(m.encoder.albert_layer_groups):
            group.register_forward_hook(lambda mod, inp, out, g=g: calls.append(g))
        m(batch()["input_ids"])
        assert calls == expected, (L, G)
    # and the shared weights really are one layer applied again and again
    model = AlbertModel(tiny_config(num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1)).eval()
    b = batch()
    with torch.no_grad():
        ids = b["input_ids"]
        x = model.encoder.embedding_hidden_mapping_in(
            model.embeddings(ids, b["token_type_ids"], model.embeddings.make_position_ids(ids)))
        layer = model.encoder.albert_layer_groups[0].albert_layers[0]
        layout = bert_kernels.Layout(tuple(ids.shape), b["attention_mask"], None, None)   # padded, with its mask
        for _ in range(3):
            x = layer(x, layout)
        m = b["attention_mask"]                    # real positions: the unpadded path leaves zeros at padding
        torch.testing.assert_close(model(b["input_ids"], m, b["token_type_ids"])[m], x[m])


def test_shapes():
    torch.manual_seed(0)
    cfg = tiny_config()
    b = batch()
    model = AlbertForPreTraining(cfg).eval()
    assert AlbertModel(cfg)(b["input_ids"], b["attention_mask"]).shape == (3, T, 32)
    assert model.albert.embeddings.word_embeddings.weight.shape == (V, 16)            # factorized: (V, E)
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert out.loss is None and out.logits.shape == (3, T, V) and out.sop_logits.shape == (3, 2)
    out = model(**b)
    n = int((b["labels"] != -100).sum())
    assert out.logits.shape == (n, V)                        # sparse MLM head: only predicted positions
    assert out.loss.ndim == 0 and set(out.metrics) >= {"mlm_acc", "mlm_loss", "sop_acc", "sop_loss"}
    torch.testing.assert_close(out.loss, out.metrics["mlm_loss"] + out.metrics["sop_loss"])
    cls = AlbertForSequenceClassification(tiny_config(num_labels=3)).eval()
    assert cls(b["input_ids"], b["attention_mask"]).logits.shape == (3, 3)
    reg = AlbertForSequenceClassification(tiny_config(num_labels=1)).eval()
    out = reg(b["input_ids"], b["attention_mask"], labels=torch.tensor([0.5, -1.0, 2.0]))
    assert out.logits.shape == (3, 1) and out.loss.ndim == 0


def test_init():
    model = AlbertModel(tiny_config(initializer_range=0.05))
    layer = model.encoder.albert_layer_groups[0].albert_layers[0]
    assert abs(layer.ffn.weight.std().item() - 0.05) < 0.005 and layer.ffn.bias.abs().max() == 0
    assert abs(model.embeddings.word_embeddings.weight[1:].std().item() - 0.05) < 0.005
    assert model.embeddings.word_embeddings.weight[0].abs().max() == 0              # the padding row
    assert (layer.full_layer_layer_norm.weight == 1).all() and (model.pooler.bias == 0).all()


@pytest.mark.parametrize("cls", [AlbertForMaskedLM, AlbertForPreTraining])
def test_sparse_head_equals_dense_head(cls):
    torch.manual_seed(0)
    assert_sparse_head_matches_dense(cls(tiny_config()).eval(), batch())


def test_padding_invariance():
    """What sits at padded positions must not change the outputs at real positions."""
    torch.manual_seed(0)
    model = AlbertModel(tiny_config()).eval()
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
    model = AlbertForPreTraining(tiny_config(num_hidden_layers=2, num_hidden_groups=1, inner_group_num=1))
    first, out = overfit(model, batch(), steps=40, lr=1e-2)
    assert out.loss.item() < 0.1 * first.loss.item()
    assert out.metrics["mlm_acc"] == 1.0 and out.metrics["sop_acc"] == 1.0


# ----------------------------------------------------------------------------- parity with transformers

def hf_config(num_labels=2):
    return transformers.AlbertConfig(**SIZES, num_labels=num_labels)


def assert_same_outputs(ours, got, ref, m):
    if ours is AlbertModel:
        assert max_diff(got[m], ref.last_hidden_state[m]) <= 1e-5
        return
    if ours is AlbertForPreTraining:
        assert max_diff(got.logits[m], ref.prediction_logits[m]) <= 1e-5
        assert max_diff(got.sop_logits, ref.sop_logits) <= 1e-5
    elif ours is AlbertForMaskedLM:
        assert max_diff(got.logits[m], ref.logits[m]) <= 1e-5
    else:
        assert max_diff(got.logits, ref.logits) <= 1e-5


CLASSES = [(cls.__name__, cls) for cls in
           (AlbertModel, AlbertForPreTraining, AlbertForMaskedLM, AlbertForSequenceClassification)]


@pytest.mark.parametrize("hf_cls, ours", CLASSES)
def test_parity_hf_to_ours(tmp_path, hf_cls, ours):
    torch.manual_seed(0)
    num_labels = 3 if ours is AlbertForSequenceClassification else 2
    hf = getattr(transformers, hf_cls)(hf_config(num_labels)).eval()
    perturb(hf, 0, std=0.05)
    hf.save_pretrained(tmp_path)
    model = ours.from_pretrained(tmp_path).eval()
    b = batch()
    args = (b["input_ids"], b["attention_mask"].long(), b["token_type_ids"])
    with torch.no_grad():
        ref = hf(*args)
        got = model(*args)
    assert_same_outputs(ours, got, ref, b["attention_mask"])
    if ours is AlbertModel:
        assert max_diff(model.pooler(got), ref.pooler_output) <= 1e-5


@pytest.mark.parametrize("hf_cls, ours", CLASSES)
def test_parity_ours_to_hf(tmp_path, hf_cls, ours):
    torch.manual_seed(1)
    model = ours(tiny_config(num_labels=3 if ours is AlbertForSequenceClassification else 2)).eval()
    perturb(model, 1, std=0.05)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [hf_cls]
    hf, info = getattr(transformers, hf_cls).from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    # every weight has its transformers name (transformers only warns, and initialises a missing one at random)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long(), b["token_type_ids"])
        got = model(b["input_ids"], m, b["token_type_ids"])
    assert_same_outputs(ours, got, ref, m)


def test_loads_bare_encoder_into_head_and_pytorch_bin(tmp_path):
    torch.manual_seed(0)
    hf = transformers.AlbertForMaskedLM(hf_config()).eval()
    perturb(hf, 2, std=0.05)
    hf.save_pretrained(tmp_path / "st")
    # a pytorch_model.bin written by hand, read with weights_only=True; like the published ones it holds
    # the tied copies predictions.decoder.weight / .bias, which are dropped (they are the embeddings / bias)
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    sd = hf.state_dict()
    assert {"predictions.decoder.weight", "predictions.decoder.bias"} <= set(sd)
    torch.save(sd, tmp_path / "pt" / "pytorch_model.bin")
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long()).logits
        for d in ("st", "pt"):
            got = AlbertForMaskedLM.from_pretrained(tmp_path / d).eval()(b["input_ids"], m).logits
            assert max_diff(got[m], ref[m]) <= 1e-5
        # the bare encoder (no pooler) into a classifier: the head and the pooler are fresh
        hf.albert.save_pretrained(tmp_path / "enc")
        with pytest.warns(UserWarning, match=r"initialised fresh .*\['albert.pooler', 'classifier'\]"):
            cls = AlbertForSequenceClassification.from_pretrained(tmp_path / "enc", num_labels=3)
        assert cls.classifier.out_features == 3
        torch.testing.assert_close(cls.albert.embeddings.word_embeddings.weight,
                                   hf.albert.embeddings.word_embeddings.weight)
        # a full pretraining checkpoint into the bare encoder: the heads are left out
        pre = transformers.AlbertForPreTraining(hf_config())
        pre.save_pretrained(tmp_path / "pre")
        enc = AlbertModel.from_pretrained(tmp_path / "pre")
        torch.testing.assert_close(enc.encoder.albert_layer_groups[1].albert_layers[1].ffn.weight,
                                   pre.albert.encoder.albert_layer_groups[1].albert_layers[1].ffn.weight)


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AlbertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AlbertModel.from_pretrained(tmp_path)
    # a BERT checkpoint given to ALBERT: the error names the model type and the file to use
    transformers.BertModel(transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=4, intermediate_size=64)
                           ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert', not 'albert'.*bert.py"):
        AlbertModel.from_pretrained(tmp_path / "bert")
    # a MaskedLM checkpoint lacks the SOP head: strict loading names what is missing
    AlbertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "mlm")
    with pytest.raises(ValueError, match="(?s)missing.*sop_classifier"):
        AlbertForPreTraining.from_pretrained(tmp_path / "mlm")
    with pytest.warns(UserWarning, match=r"AlbertForPreTraining: initialised fresh .*'sop_classifier.classifier'"):
        AlbertForPreTraining.from_pretrained(tmp_path / "mlm", strict=False)
    # other sizes: a shape error that says so
    AlbertModel(tiny_config()).save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="(?s)wrong shape.*word_embeddings"):
        AlbertModel.from_pretrained(tmp_path / "enc", vocab_size=V + 1)
    with pytest.raises(ValueError, match="(?s)wrong shape.*embedding_hidden_mapping_in"):
        AlbertModel.from_pretrained(tmp_path / "enc", embedding_size=8)
    # three groups' worth of weights cannot load into two
    AlbertModel(tiny_config(num_hidden_groups=3)).save_pretrained(tmp_path / "g3")
    with pytest.raises(ValueError, match="(?s)unexpected.*albert_layer_groups.2"):
        AlbertModel.from_pretrained(tmp_path / "g3", num_hidden_groups=2)
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["model_type"] == "albert"


def test_pretraining_classes():
    assert albert.FAMILY.pretraining == {"mlm+sop": AlbertForPreTraining, "mlm": AlbertForMaskedLM}
    assert albert.FAMILY.default_objective == "mlm+sop" and albert.FAMILY.tokenizer_kind == "unigram"
