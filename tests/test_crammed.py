"""The efficient-BERT options (pre_layernorm, norm_type, use_bias, ffn_type) and the crammed presets.

  * each option changes only what it names: a layer computes what a hand-written layer computes
    from the same weights, for every option alone and all together; the checkpoint keys and the
    parameter counts change by exactly what is computed by hand;
  * crammed-tiny of every family: shapes, overfitting one batch, unpadded == padded;
  * save_pretrained / from_pretrained round trip, the transformers_compatible flag, check_hf_compatible;
  * train.py --preset crammed-tiny runs.
"""
import importlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from helpers import max_diff, overfit, padded_batch, perturb
from test_train import base_args, write_corpus

V, T = 99, 24
SIZES = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
# family -> (module, config class, base model, MLM model, extra config for the small test sizes)
FAMILIES = {
    "bert": ("bert", "BertConfig", "BertModel", "BertForPreTraining", {}),
    "roberta": ("roberta", "RobertaConfig", "RobertaModel", "RobertaForMaskedLM", {}),
    "albert": ("albert", "AlbertConfig", "AlbertModel", "AlbertForPreTraining",
               dict(embedding_size=16, classifier_dropout_prob=0.0)),
    "electra": ("electra", "ElectraConfig", "ElectraModel", "ElectraForMaskedLM", dict(embedding_size=16)),
}
OPTIONS = {"pre_layernorm": True, "norm_type": "rmsnorm", "use_bias": False, "ffn_type": "geglu"}
DEFAULTS = {"pre_layernorm": False, "norm_type": "layernorm", "use_bias": True, "ffn_type": "mlp"}


def family(name):
    module, config, base, mlm, extra = FAMILIES[name]
    mod = importlib.import_module(module)
    return mod, getattr(mod, config), getattr(mod, base), getattr(mod, mlm), extra


def small(name, **options):
    mod, config_cls, base, mlm, extra = family(name)
    return config_cls(**SIZES, **extra, **options)


def build(name, head=False, seed=0, **options):
    mod, _, base, mlm, _ = family(name)
    torch.manual_seed(seed)
    return perturb((mlm if head else base)(small(name, **options)), seed=seed + 1, std=0.1).eval()


# ----------------------------------------------------------------------------- by hand

def linear(m, x):
    return x @ m.weight.T + (m.bias if m.bias is not None else 0)


def norm(m, x, cfg):
    if cfg.norm_type == "rmsnorm":
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_eps) * m.weight
    mu = x.mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt((x - mu).pow(2).mean(-1, keepdim=True) + cfg.layer_norm_eps) * m.weight
    return y + m.bias if m.bias is not None else y


def act(x, cfg):
    return F.gelu(x, approximate="tanh" if cfg.hidden_act == "gelu_new" else "none")


def attention(q, k, v, heads):
    B, T, H = q.shape
    d = H // heads
    split = lambda t: t.view(B, T, heads, d).transpose(1, 2)                    # (B, nh, T, d)
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d ** 0.5, dim=-1)
    return (w @ split(v)).transpose(1, 2).reshape(B, T, H)


def parts(name, model):
    """The model's layers, each as its pieces under common names (ALBERT: the one shared layer, L times)."""
    if name == "albert":
        layer = model.encoder.albert_layer_groups[0].albert_layers[0]
        a = layer.attention
        one = dict(q=a.query, k=a.key, v=a.value, o=a.dense, norm1=a.LayerNorm,
                   up=layer.ffn, down=layer.ffn_output, norm2=layer.full_layer_layer_norm)
        return [one] * model.config.num_hidden_layers
    return [dict(q=l.attention.self.query, k=l.attention.self.key, v=l.attention.self.value,
                 o=l.attention.output.dense, norm1=l.attention.output.LayerNorm,
                 up=l.intermediate.dense, down=l.output.dense, norm2=l.output.LayerNorm)
            for l in model.encoder.layer]


def layer_by_hand(p, x, cfg):
    attn = lambda t: linear(p["o"], attention(linear(p["q"], t), linear(p["k"], t), linear(p["v"], t),
                                              cfg.num_attention_heads))

    def ffn(t):
        u = linear(p["up"], t)
        if cfg.ffn_type == "geglu":                                             # down(gelu(a) * b)
            I = cfg.intermediate_size
            return linear(p["down"], act(u[..., :I], cfg) * u[..., I:])
        return linear(p["down"], act(u, cfg))

    if cfg.pre_layernorm:                                                       # x + Attn(LN(x)), x + FFN(LN(x))
        x = x + attn(norm(p["norm1"], x, cfg))
        return x + ffn(norm(p["norm2"], x, cfg))
    x = norm(p["norm1"], x + attn(x), cfg)                                      # LN(x + Attn(x)), LN(x + FFN(x))
    return norm(p["norm2"], x + ffn(x), cfg)


def encoder_input(name, model, ids):
    x = model.embeddings(ids, torch.zeros_like(ids), model.embeddings.make_position_ids(ids))
    if name == "albert":
        return model.encoder.embedding_hidden_mapping_in(x)
    if name == "electra" and model.embeddings_project is not None:
        return model.embeddings_project(x)
    return x


COMBOS = [{}] + [{k: v} for k, v in OPTIONS.items()] + [OPTIONS]


@pytest.mark.parametrize("options", COMBOS, ids=lambda o: "+".join(o) or "published")
@pytest.mark.parametrize("name", FAMILIES)
def test_model_equals_hand_written_layers(name, options):
    """The whole encoder, from the embeddings' output on, equals the layers written out by hand from the
    same weights: pre-LN (and its final norm), RMSNorm's formula, no biases, GEGLU, each alone and together."""
    model = build(name, **options)
    cfg = model.config
    ids = torch.randint(5, V, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = encoder_input(name, model, ids)
        for p in parts(name, model):
            x = layer_by_hand(p, x, cfg)
        if cfg.pre_layernorm:
            x = norm(model.encoder.final_layer_norm, x, cfg)
        out = model(ids)
    assert max_diff(out, x) < 2e-5
    if options:                                  # the option makes a difference, so the check can fail
        assert max_diff(out, build(name)(ids).detach()) > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_each_option_changes_only_what_it_names(name):
    """Checkpoint keys and shapes, against the published architecture's, for each option alone."""
    ref = {k: v.shape for k, v in build(name, head=True).state_dict().items()}
    for option, value in OPTIONS.items():
        got = {k: v.shape for k, v in build(name, head=True, **{option: value}).state_dict().items()}
        added, removed = got.keys() - ref.keys(), ref.keys() - got.keys()
        reshaped = {k for k in got.keys() & ref.keys() if got[k] != ref[k]}
        if option == "pre_layernorm":
            assert {k.split("encoder.", 1)[1] for k in added} == {"final_layer_norm.weight", "final_layer_norm.bias"}
            assert not removed and not reshaped
        elif option == "norm_type":                  # every norm, heads and embeddings included, loses its bias
            norms = {k for k in ref if "LayerNorm" in k or "layer_norm" in k}
            assert not added and not reshaped and removed == {k for k in norms if k.endswith(".bias")}
        elif option == "use_bias":                   # the layers' linear maps and norms only
            assert not added and not reshaped and removed
            assert all(k.endswith(".bias") and ".encoder." in f".{k}" for k in removed), removed
            assert not any("embedding" in k or "embeddings" in k for k in removed)
        else:                                        # geglu: the up projection is twice as wide
            assert not added and not removed
            up = "ffn." if name == "albert" else "intermediate.dense."
            assert reshaped and all(up in k for k in reshaped)
            assert all(got[k][0] == 2 * ref[k][0] for k in reshaped)


def layer_count(cfg):
    return cfg.num_hidden_groups * cfg.inner_group_num if hasattr(cfg, "num_hidden_groups") else cfg.num_hidden_layers


@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_counts_by_hand(name):
    cfg = small(name)
    L, H, I = layer_count(cfg), cfg.hidden_size, cfg.intermediate_size
    E = getattr(cfg, "embedding_size", H)
    n = lambda **o: build(name, **o).num_parameters()
    base = n()
    # no biases: q, k, v, attention output (4H), up (I) and down (H) projections, two norms (2H), per layer
    assert base - n(use_bias=False) == L * (4 * H + I + H + 2 * H)
    assert n(ffn_type="geglu") - n(use_bias=False, ffn_type="geglu") == L * (4 * H + 2 * I + H + 2 * H)
    # pre-LN adds the final norm: weight and bias, or the weight alone without biases
    assert n(pre_layernorm=True) - base == 2 * H
    assert n(use_bias=False) - n(use_bias=False, pre_layernorm=True) == -H
    # GEGLU: a second up projection, H x I weights and I biases, per layer
    assert n(ffn_type="geglu") - base == L * (H * I + I)
    # RMSNorm has no bias: the embeddings' norm (E) and two norms per layer (2H)
    assert base - n(norm_type="rmsnorm") == E + L * 2 * H


def test_norm_modules_and_rmsnorm_formula():
    model = build("bert", head=True, norm_type="rmsnorm")
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))}
    assert kinds == {nn.RMSNorm}
    n_norms = sum(isinstance(m, nn.LayerNorm) for m in build("bert", head=True).modules())
    assert sum(isinstance(m, nn.RMSNorm) for m in model.modules()) == n_norms == 1 + 2 * 2 + 1   # emb, layers, head
    m = model.bert.embeddings.LayerNorm
    x = torch.randn(3, 5, 32) * 3 + 1
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * m.weight
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="norm_type='batchnorm'.*'layernorm', 'rmsnorm'"):
        small("bert", norm_type="batchnorm")
    with pytest.raises(ValueError, match="ffn_type='swiglu'"):
        small("albert", ffn_type="swiglu")


def test_use_bias_false_leaves_no_bias_in_the_layers():
    for name in FAMILIES:
        model = build(name, head=True, use_bias=False, pre_layernorm=True)
        encoder = next(m for n, m in model.named_modules() if n.endswith("encoder"))
        for n, m in encoder.named_modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and n != "embedding_hidden_mapping_in":
                assert m.bias is None, f"{name}: {n}"
        assert not [k for k, _ in encoder.named_parameters() if k.endswith(".bias") and "mapping_in" not in k]


# ----------------------------------------------------------------------------- the crammed presets

def test_crammed_presets():
    for name in FAMILIES:
        _, config_cls, _, _, _ = family(name)
        for preset in ("crammed", "crammed-tiny"):
            cfg = config_cls.from_preset(preset)
            assert (cfg.pre_layernorm, cfg.norm_type, cfg.use_bias, cfg.ffn_type) == (True, "layernorm", False, "geglu")
            assert cfg.hidden_dropout_prob == cfg.attention_probs_dropout_prob == 0.0
        big, tiny = config_cls.from_preset("crammed"), config_cls.from_preset("crammed-tiny")
        # base-sized; the up projection 2 x 1536 = BERT-base's 3072, as Cramming kept it
        assert (big.num_hidden_layers, big.hidden_size, big.num_attention_heads, big.intermediate_size) == (12, 768, 12, 1536)
        assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.intermediate_size) == (2, 128, 2, 256)
        if name in ("albert", "electra"):
            assert big.embedding_size == {"albert": 128, "electra": 768}[name]
        for preset in config_cls.PRESETS:             # the published presets use none of the options
            if not preset.startswith("crammed"):
                assert config_cls.from_preset(preset).hf_incompatible() == [], (name, preset)


def tiny_batch(name, cfg, B=3, seed=0):
    b = padded_batch(V, T, pad_id=cfg.pad_token_id, B=B, seed=seed, segments=name != "roberta")
    if name == "bert":
        b["next_sentence_label"] = torch.tensor([0, 1, 0])[:B]
    if name == "albert":
        b["sentence_order_label"] = torch.tensor([0, 1, 1])[:B]
    return b


@pytest.mark.parametrize("name", FAMILIES)
def test_crammed_tiny_shapes_overfit_and_unpadding(name):
    _, config_cls, base_cls, mlm_cls, _ = family(name)
    cfg = config_cls.from_preset("crammed-tiny", vocab_size=V)
    b = tiny_batch(name, cfg)
    torch.manual_seed(0)
    model = mlm_cls(cfg)
    base = getattr(model, name)
    assert base(b["input_ids"], b["attention_mask"]).shape == (3, T, 128)
    out = model(b["input_ids"], b["attention_mask"])
    assert out.logits.shape == (3, T, V) and out.loss is None
    n = int((b["labels"] != -100).sum())
    assert model(**b).logits.shape == (n, V)

    # unpadded (the default) == padded (dense path) at the real positions, outputs and gradients
    perturb(model, std=0.05).eval()                     # eval: ALBERT's SOP head keeps its dropout
    dense = mlm_cls(config_cls.from_preset("crammed-tiny", vocab_size=V, unpad=False)).eval()
    dense.load_state_dict(model.state_dict())
    real = b["attention_mask"]
    h1, h2 = base(b["input_ids"], real), getattr(dense, name)(b["input_ids"], real)
    assert max_diff(h1[real], h2[real]) < 1e-5
    model(**b).loss.backward()
    dense(**b).loss.backward()
    for (k, p), q in zip(model.named_parameters(), dense.parameters()):
        assert p.grad is not None and max_diff(p.grad, q.grad) < 1e-4, k

    # one batch is learnt: the loss falls well below where it started
    torch.manual_seed(0)
    first, last = overfit(mlm_cls(cfg).train(), b, steps=30, lr=3e-3)
    assert last.loss.item() < 0.2 * first.loss.item(), (first.loss.item(), last.loss.item())


# ----------------------------------------------------------------------------- saving and loading

@pytest.mark.parametrize("name", FAMILIES)
def test_crammed_round_trip_and_hf_compatibility(name, tmp_path, recwarn):
    mod, config_cls, _, mlm_cls, _ = family(name)
    b = tiny_batch(name, config_cls.from_preset("crammed-tiny"))
    for i, extra in enumerate(({}, {"norm_type": "rmsnorm"})):          # crammed, and with every option on
        cfg = config_cls.from_preset("crammed-tiny", vocab_size=V, **extra)
        torch.manual_seed(0)
        model = perturb(mlm_cls(cfg), std=0.05).eval()
        path = tmp_path / str(i)
        recwarn.clear()
        model.save_pretrained(path)
        model.save_pretrained(path)                                      # said once per model
        said = [str(w.message) for w in recwarn if "cannot be expressed" in str(w.message)]
        assert len(said) == 1 and "pre_layernorm=True" in said[0]
        saved = json.loads((path / "config.json").read_text())
        assert saved["transformers_compatible"] is False
        assert {k: saved.get(k, DEFAULTS[k]) for k in OPTIONS} == {k: getattr(cfg, k) for k in OPTIONS}
        loaded = mlm_cls.from_pretrained(path).eval()
        assert loaded.config == cfg
        with torch.no_grad():
            assert torch.equal(loaded(b["input_ids"], b["attention_mask"]).logits,
                               model(b["input_ids"], b["attention_mask"]).logits)
        with pytest.raises(ValueError, match=r"pre_layernorm=True, .*use_bias=False, ffn_type='geglu' cannot be "
                                             rf"expressed in transformers' {mlm_cls.__name__}"):
            model.check_hf_compatible()
        if extra:
            with pytest.raises(ValueError, match="norm_type='rmsnorm'"):
                loaded.check_hf_compatible()
    # a published architecture: the check passes and config.json is what transformers writes
    torch.manual_seed(0)
    plain = mlm_cls(config_cls.from_preset("tiny", vocab_size=V))
    plain.check_hf_compatible()
    recwarn.clear()
    plain.save_pretrained(tmp_path / "plain")
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert not {"transformers_compatible", *OPTIONS} & saved.keys()
    assert not [w for w in recwarn if "cannot be expressed" in str(w.message)]


def test_electra_joint_model_round_trip(tmp_path):
    import electra
    cfg = electra.ElectraConfig.from_preset("crammed-tiny", vocab_size=V)
    torch.manual_seed(0)
    model = perturb(electra.Electra(cfg), std=0.05).eval()
    assert model.generator.config.pre_layernorm and model.generator.config.ffn_type == "geglu"
    with pytest.raises(ValueError, match="ElectraForPreTraining"):
        model.check_hf_compatible()
    with pytest.warns(UserWarning) as said:
        model.save_pretrained(tmp_path)
    assert [str(w.message).split(":")[0] for w in said] == ["ElectraForPreTraining", "ElectraForMaskedLM"]
    assert json.loads((tmp_path / "generator" / "config.json").read_text())["transformers_compatible"] is False
    loaded = electra.Electra.from_pretrained(tmp_path).eval()
    b = tiny_batch("electra", cfg)
    with torch.no_grad():
        assert torch.equal(loaded(b["input_ids"], b["attention_mask"]).logits,
                           model(b["input_ids"], b["attention_mask"]).logits)


# ----------------------------------------------------------------------------- train.py

@pytest.mark.parametrize("model", ["bert", "electra"])
def test_train_py_crammed_tiny(model, tmp_path, monkeypatch, recwarn):
    import train
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    corpus = write_corpus(tmp_path / "text", n_docs=30)
    out = tmp_path / "run"
    train.main(base_args(corpus, out, model=model, **{"--preset": "crammed-tiny", "--steps": "4",
                                                      "--save-every": "4", "--eval-every": "4",
                                                      "--seq-len": "32", "--show": "0"}))
    saved = json.loads((out / "config.json").read_text())
    assert saved["pre_layernorm"] is True and saved["ffn_type"] == "geglu" and saved["transformers_compatible"] is False
    said = [w for w in recwarn if "cannot be expressed" in str(w.message)]
    assert len(said) == (2 if model == "electra" else 1)                 # discriminator, generator: once each
    mod = importlib.import_module(model)
    cls = mod.Electra if model == "electra" else mod.BertForPreTraining
    assert cls.from_pretrained(out).config.use_bias is False
