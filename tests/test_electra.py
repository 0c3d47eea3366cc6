"""electra.py: sizes, shapes, padding invariance, overfitting, the replaced-token-detection objective,
and parity with Hugging Face transformers (single models and the generator + discriminator run directory)."""
import json

import pytest
import torch
import torch.nn.functional as F

import electra
from helpers import assert_sparse_head_matches_dense, max_diff, overfit, padded_batch, perturb
from electra import (Electra, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining,
                     ElectraForSequenceClassification, ElectraModel)

transformers = pytest.importorskip("transformers")

V, T, MASK = 99, 24, 4


def tiny_config(**kw):
    # E = 24 differs from both hidden sizes (32, generator 16): both models use embeddings_project
    kw = {"vocab_size": V, "embedding_size": 24, "hidden_size": 32, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 64, "generator_size": 0.5, "temperature": 1.0, **kw}
    return ElectraConfig.from_preset("tiny", **kw)


def batch(B=3, seed=0):
    """A batch as data.py gives it: chosen tokens are [MASK] or left as they are; labels = originals there."""
    g = torch.Generator().manual_seed(seed)
    b = padded_batch(V, T, B=B, rng=g)
    chosen = b["labels"] != -100
    b["input_ids"][chosen & (torch.rand(B, T, generator=g) < 0.85)] = MASK
    return b


def test_presets_and_config():
    sizes = {n: (c["num_hidden_layers"], c["hidden_size"], c["embedding_size"], c["num_attention_heads"],
                 c["intermediate_size"]) for n, c in ElectraConfig.PRESETS.items()
             if not n.startswith("crammed")}   # tests/test_crammed.py checks those
    assert sizes == {"tiny": (2, 128, 128, 2, 512), "mini": (4, 256, 128, 4, 1024),
                     "small": (12, 256, 128, 4, 1024), "base": (12, 768, 768, 12, 3072),
                     "large": (24, 1024, 1024, 16, 4096)}
    # the paper's generators: 1/4, 1/3, 1/4 of hidden size, heads and FFN; as many layers; the same E
    for name, gen in {"small": (12, 64, 1, 256), "base": (12, 256, 4, 1024), "large": (24, 256, 4, 1024),
                      "tiny": (2, 32, 1, 128), "mini": (4, 64, 1, 256)}.items():
        cfg = ElectraConfig.from_preset(name)
        g = cfg.generator_config()
        assert (g.num_hidden_layers, g.hidden_size, g.num_attention_heads, g.intermediate_size) == gen, name
        assert (g.embedding_size, g.vocab_size) == (cfg.embedding_size, cfg.vocab_size)
    # ELECTRA-small's discriminator has 14M parameters with the 30522-token vocabulary (the paper's figure)
    n = ElectraForPreTraining(ElectraConfig.from_preset("small")).num_parameters()
    assert 13e6 < n < 14.5e6
    with pytest.raises(ValueError, match="unknown electra preset 'huge'.*tiny"):
        ElectraConfig.from_preset("huge")
    with pytest.raises(ValueError, match="generator_size=0.3"):
        ElectraConfig.from_preset("base", generator_size=0.3).generator_config()
    assert electra.FAMILY.masking == dict(mlm_probability=0.15, mask_ratio=0.85, random_ratio=0.0)
    assert electra.FAMILY.pretraining == {"rtd": Electra, "mlm": ElectraForMaskedLM}
    assert electra.FAMILY.default_objective in electra.FAMILY.pretraining and electra.FAMILY.tokenizer_kind == "wordpiece"


def test_shapes():
    torch.manual_seed(0)
    cfg = tiny_config()
    b = batch()
    args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    n = int((b["labels"] != -100).sum())
    assert ElectraModel(cfg)(*args).shape == (3, T, 32)
    disc = ElectraForPreTraining(cfg).eval()
    assert disc(*args).logits.shape == (3, T) and disc(*args).loss is None
    gen = ElectraForMaskedLM(cfg.generator_config()).eval()
    assert gen(*args).logits.shape == (3, T, V)
    assert gen(*args, labels=b["labels"]).logits.shape == (n, V)       # sparse head: only masked positions
    assert ElectraForSequenceClassification(tiny_config(num_labels=3))(*args).logits.shape == (3, 3)
    model = Electra(cfg).eval()
    out = model(**b)
    assert out.loss.ndim == 0 and out.logits.shape == (3, T)
    assert set(out.metrics) == {"mlm_loss", "mlm_acc", "rtd_loss", "rtd_acc", "rtd_precision", "rtd_recall",
                                "replaced_frac"}
    assert model(*args).loss is None and model(*args).logits.shape == (3, T)
    shown = model.replaced_token_detection(**b, rng=torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in shown.items()} == {k: (3, T) for k in
                                                           ("original", "corrupted", "is_replaced", "p_replaced")}
    assert torch.equal(shown["original"], torch.where(b["labels"] != -100, b["labels"], b["input_ids"]))
    assert ((shown["p_replaced"] >= 0) & (shown["p_replaced"] <= 1)).all()


def test_sparse_head_equals_dense_head():
    torch.manual_seed(0)
    assert_sparse_head_matches_dense(ElectraForMaskedLM(tiny_config()).eval(), batch())


def test_padding_invariance():
    """What sits at padded positions must not change the outputs at real positions."""
    torch.manual_seed(0)
    model = ElectraForPreTraining(tiny_config()).eval()
    b = batch()
    m = b["attention_mask"]
    y1 = model(b["input_ids"], m, b["token_type_ids"]).logits
    ids = b["input_ids"].clone()
    ids[~m] = torch.randint(5, V, (int((~m).sum()),))
    y2 = model(ids, m, b["token_type_ids"]).logits
    torch.testing.assert_close(y1[m], y2[m], atol=1e-5, rtol=1e-5)
    # and a shorter, unpadded row gives the same result as the padded one
    short = model(b["input_ids"][2:, :5], None, b["token_type_ids"][2:, :5]).logits
    torch.testing.assert_close(short[0], y1[2, :5], atol=1e-5, rtol=1e-5)
    # the discriminator's loss counts real tokens only: labels at padding do not matter
    labels = torch.zeros_like(ids)
    loss = model(ids, m, b["token_type_ids"], labels=labels).loss
    labels[~m] = 1
    torch.testing.assert_close(model(ids, m, b["token_type_ids"], labels=labels).loss, loss)


def test_overfits_one_batch():
    """The generator learns the masked tokens, its samples become the originals, and the
    discriminator learns to say so: the joint loss (MLM + 50 x RTD) falls from ~39 to ~0.1-1.2. (One wrong
    RTD call costs 50x: after 100 steps the loss still swings between 1.4 and 8.2 with the thread count.)"""
    torch.manual_seed(0)
    model = Electra(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    first, out = overfit(model, batch(), steps=200, lr=1e-2)
    assert out.loss.item() < 0.2 * first.loss.item()
    assert out.metrics["mlm_loss"] < 0.05 * first.metrics["mlm_loss"] and out.metrics["mlm_acc"] == 1.0
    assert out.metrics["rtd_loss"] < 0.2 * first.metrics["rtd_loss"] and out.metrics["rtd_acc"] > 0.95


# ----------------------------------------------------------------------------- the objective

@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gumbel_sample_follows_the_softmax(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, 4).to(torch.bfloat16).requires_grad_()
    ids = electra.gumbel_sample(logits, torch.Generator().manual_seed(0), temperature)   # (N,)
    assert ids.shape == (20000,) and not ids.requires_grad
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    want = (logits[0].float() / temperature).softmax(-1).detach()
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


def test_config_temperature_reaches_the_sampling():
    """temperature -> 0 makes the samples the generator's argmax; at 1 they are not (near-uniform logits)."""
    torch.manual_seed(0)
    b = batch()
    at = b["labels"] != -100
    for temperature, all_argmax in ((1e-4, True), (1.0, False)):
        model = Electra(tiny_config(temperature=temperature)).eval()
        argmax = model.generator(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                                 labels=b["labels"]).logits.argmax(-1)                     # (N,)
        samples = model.replaced_token_detection(**b)["corrupted"][at]
        assert bool((samples == argmax).all()) == all_argmax


def test_vocabulary_padding_is_never_sampled():
    """A vocabulary rounded up past the tokenizer's: the padding ids are never put into the text, even where
    the generator gives them all the probability (where it does not, they would be sampled)."""
    torch.manual_seed(0)
    b = batch()
    for tokenizer_vocab_size, padding_sampled in ((None, True), (V - 9, False)):
        model = Electra(tiny_config(tokenizer_vocab_size=tokenizer_vocab_size)).eval()
        with torch.no_grad():
            model.generator.generator_lm_head.bias[V - 9:] = 1e4       # ids V-9..V-1: the "padding"
        samples = model.replaced_token_detection(**b)["corrupted"][b["labels"] != -100]     # (N,)
        assert bool((samples >= V - 9).all()) == padding_sampled
        assert bool((samples >= V - 9).any()) == padding_sampled


def sample_original_at_even_positions(b):
    """A stand-in for the generator's sampling: the original token at every other masked position,
    another token at the rest. Returns the stand-in and the disc labels it must lead to."""
    predicted = b["labels"] != -100
    originals = b["labels"][predicted]                                             # (N,)
    keep = torch.arange(len(originals)) % 2 == 0
    samples = torch.where(keep, originals, (originals - 5 + 1) % (V - 5) + 5)     # never the original there
    expected = torch.zeros_like(predicted)
    expected[predicted] = ~keep
    return (lambda logits, rng=None, temperature=1.0: samples), samples, expected


def test_disc_labels_are_where_the_sample_differs(monkeypatch):
    torch.manual_seed(0)
    model = Electra(tiny_config()).eval()
    b = batch()
    fake, samples, expected = sample_original_at_even_positions(b)
    monkeypatch.setattr(electra, "gumbel_sample", fake)
    shown = model.replaced_token_detection(**b)
    assert torch.equal(shown["is_replaced"], expected)                 # a sample equal to the original is "original"
    corrupted = b["input_ids"].clone()
    corrupted[b["labels"] != -100] = samples
    assert torch.equal(shown["corrupted"], corrupted)
    out = model(**b)
    m = b["attention_mask"]
    torch.testing.assert_close(out.metrics["replaced_frac"], expected[m].float().mean())


def test_loss_is_the_weighted_sum_by_hand(monkeypatch):
    torch.manual_seed(0)
    model = Electra(tiny_config(generator_weight=2.0, discriminator_weight=7.0)).eval()
    b = batch()
    fake, samples, expected = sample_original_at_even_positions(b)
    monkeypatch.setattr(electra, "gumbel_sample", fake)
    out = model(**b)
    m, predicted = b["attention_mask"], b["labels"] != -100
    with torch.no_grad():
        gen_logits = model.generator(b["input_ids"], m, b["token_type_ids"]).logits       # (B, T, V), dense
        gen_loss = F.cross_entropy(gen_logits[predicted], b["labels"][predicted])
        corrupted = b["input_ids"].clone()
        corrupted[predicted] = samples
        disc_logits = model.discriminator(corrupted, m, b["token_type_ids"]).logits    # (B, T)
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits[m], expected[m].float())
    torch.testing.assert_close(out.loss, 2.0 * gen_loss + 7.0 * disc_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, disc_logits)
    said = disc_logits[m] > 0
    torch.testing.assert_close(out.metrics["rtd_acc"], (said == expected[m]).float().mean())
    torch.testing.assert_close(out.metrics["rtd_recall"], (said & expected[m]).sum() / expected[m].sum())


def grads(model, b, generator_weight, discriminator_weight):
    model.config.generator_weight, model.config.discriminator_weight = generator_weight, discriminator_weight
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)                                      # the same Gumbel noise, hence the same samples
    model(**b).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_shared_embeddings_are_one_parameter_trained_by_both_losses():
    torch.manual_seed(0)
    model = Electra(tiny_config()).eval()
    gen_emb, disc_emb = model.generator.electra.embeddings, model.discriminator.electra.embeddings
    assert gen_emb is disc_emb
    names = [n for n, _ in model.named_parameters()]
    assert sum("word_embeddings" in n for n in names) == 1 and sum("LayerNorm" in n for n in names) > 2
    # the generator keeps its own projection E -> H_gen; the embeddings' parameters are counted once
    assert model.generator.electra.embeddings_project.out_features == 16
    n_shared = sum(p.numel() for p in disc_emb.parameters())
    assert (sum(p.numel() for p in model.parameters())
            == model.generator.num_parameters() + model.discriminator.num_parameters() - n_shared)
    b = batch()
    both, gen_only, disc_only = grads(model, b, 1.0, 50.0), grads(model, b, 1.0, 0.0), grads(model, b, 0.0, 50.0)
    for name in [n for n in names if ".embeddings." in n]:
        assert gen_only[name].abs().sum() > 0 and disc_only[name].abs().sum() > 0, name
        torch.testing.assert_close(both[name], gen_only[name] + disc_only[name], atol=1e-6, rtol=1e-5)


def test_no_gradient_through_the_sampling():
    """The generator learns from its MLM loss only: the discriminator's loss gives it zero gradient."""
    torch.manual_seed(0)
    model = Electra(tiny_config())
    g = grads(model, batch(), generator_weight=0.0, discriminator_weight=50.0)
    generator_only = [n for n in g if n.startswith("generator.") and ".embeddings." not in n]
    assert len(generator_only) > 10 and any("embeddings_project" in n for n in generator_only)
    for n in generator_only:
        assert g[n].abs().max() == 0, n
    assert all(g[n].abs().sum() > 0 for n in g if n.startswith("discriminator."))


# ----------------------------------------------------------------------------- parity with transformers

def hf_config(embedding_size=24, num_labels=2):
    return transformers.ElectraConfig(vocab_size=V, embedding_size=embedding_size, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                      max_position_embeddings=64, num_labels=num_labels)


def compare(ours, model, ref, m):
    """Largest difference between our outputs and transformers' at the real positions."""
    if ours is ElectraModel:
        return max_diff(model[m], ref.last_hidden_state[m])
    if ours is ElectraForSequenceClassification:
        return max_diff(model.logits, ref.logits)
    return max_diff(model.logits[m], ref.logits[m])           # (B, T) or (B, T, V)


CASES = [(ElectraForPreTraining, "ElectraForPreTraining", 24), (ElectraForMaskedLM, "ElectraForMaskedLM", 24),
         (ElectraModel, "ElectraModel", 24), (ElectraModel, "ElectraModel", 32),
         (ElectraForSequenceClassification, "ElectraForSequenceClassification", 24)]


@pytest.mark.parametrize("ours, hf_cls, E", CASES)
def test_parity_hf_to_ours(tmp_path, ours, hf_cls, E):
    torch.manual_seed(0)
    hf = perturb(getattr(transformers, hf_cls)(hf_config(E, num_labels=3)).eval())
    hf.save_pretrained(tmp_path)
    model = ours.from_pretrained(tmp_path).eval()
    encoder = model if ours is ElectraModel else model.electra
    assert (encoder.embeddings_project is None) == (E == 32)            # E == H: no projection
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long(), b["token_type_ids"])
        got = model(b["input_ids"], m, b["token_type_ids"])
    assert compare(ours, got, ref, m) <= 1e-5


@pytest.mark.parametrize("ours, hf_cls, E", CASES)
def test_parity_ours_to_hf(tmp_path, ours, hf_cls, E):
    model = perturb(ours(tiny_config(embedding_size=E, num_labels=3)).eval())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [hf_cls]
    hf = getattr(transformers, hf_cls).from_pretrained(tmp_path).eval()
    b = batch()
    m = b["attention_mask"]
    with torch.no_grad():
        ref = hf(b["input_ids"], m.long(), b["token_type_ids"])
        got = model(b["input_ids"], m, b["token_type_ids"])
    assert compare(ours, got, ref, m) <= 1e-5


def test_run_directory_generator_and_discriminator(tmp_path):
    """Electra.save_pretrained: the discriminator at the root and the generator in generator/, both
    loadable by transformers; Electra.from_pretrained puts them back together, embeddings shared."""
    model = perturb(Electra(tiny_config())).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["ElectraForPreTraining"]
    gen_config = json.loads((tmp_path / "generator" / "config.json").read_text())
    assert gen_config["architectures"] == ["ElectraForMaskedLM"] and gen_config["hidden_size"] == 16
    b = batch()
    m, args = b["attention_mask"], (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    hf_disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path).eval()
    hf_gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator").eval()
    with torch.no_grad():
        hf_args = (b["input_ids"], m.long(), b["token_type_ids"])
        assert max_diff(model.discriminator(*args).logits[m], hf_disc(*hf_args).logits[m]) <= 1e-5
        assert max_diff(model.generator(*args).logits[m], hf_gen(*hf_args).logits[m]) <= 1e-5

        loaded = Electra.from_pretrained(tmp_path).eval()
        assert loaded.generator.electra.embeddings is loaded.discriminator.electra.embeddings
        assert loaded.config.generator_size == 0.5 and loaded.config.discriminator_weight == 50.0
        ours = dict(model.named_parameters())
        assert {n: p.shape for n, p in loaded.named_parameters()} == {n: p.shape for n, p in ours.items()}
        assert all(torch.equal(p, ours[n]) for n, p in loaded.named_parameters())
        torch.manual_seed(3)
        ref = model(**b)
        torch.manual_seed(3)
        assert torch.equal(loaded(**b).loss, ref.loss)

        # fine-tuning and the bare discriminator read the root: the replaced-token head is left out
        with pytest.warns(UserWarning) as said:
            cls = ElectraForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
        assert [str(w.message).split(" (")[0].split(": ")[1] for w in said] == ["initialised fresh", "not used"]
        disc = ElectraForPreTraining.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(cls.electra.embeddings.word_embeddings.weight,
                                   model.discriminator.electra.embeddings.word_embeddings.weight)
        assert torch.equal(disc(*args).logits, model.discriminator(*args).logits)


def test_loads_pytorch_bin_with_the_tied_output_matrix(tmp_path):
    """Published generators store generator_lm_head.weight (a copy of the word embeddings) in pytorch_model.bin."""
    torch.manual_seed(0)
    hf = perturb(transformers.ElectraForMaskedLM(hf_config()).eval())
    tmp_path.joinpath("config.json").write_text(hf.config.to_json_string())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert "generator_lm_head.weight" in hf.state_dict()
    b = batch()
    with torch.no_grad():
        ref = hf(b["input_ids"], b["attention_mask"].long()).logits
        got = ElectraForMaskedLM.from_pretrained(tmp_path).eval()(b["input_ids"], b["attention_mask"]).logits
    assert max_diff(got[b["attention_mask"]], ref[b["attention_mask"]]) <= 1e-5


def test_loading_errors(tmp_path):
    transformers.BertModel(transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=4, intermediate_size=64)
                           ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert', not 'electra'"):
        ElectraModel.from_pretrained(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ElectraModel.from_pretrained(tmp_path)
    # a discriminator alone: Electra needs its generator, unless strict=False
    ElectraForPreTraining(tiny_config()).save_pretrained(tmp_path / "disc")
    with pytest.raises(FileNotFoundError, match="no generator/"):
        Electra.from_pretrained(tmp_path / "disc")
    with pytest.warns(UserWarning, match="Electra: no generator in .*a fresh one shares"):
        fresh = Electra.from_pretrained(tmp_path / "disc", strict=False)
    assert fresh.generator.electra.embeddings is fresh.discriminator.electra.embeddings
    # a generator whose embeddings are not the discriminator's
    ElectraForMaskedLM(tiny_config().generator_config()).save_pretrained(tmp_path / "disc" / "generator")
    with pytest.raises(ValueError, match="embeddings .* differ"):
        Electra.from_pretrained(tmp_path / "disc")
    with pytest.warns(UserWarning, match="embeddings differ from the discriminator's; sharing the latter"):
        shared = Electra.from_pretrained(tmp_path / "disc", strict=False)
    assert shared.generator.electra.embeddings is shared.discriminator.electra.embeddings
    with pytest.raises(ValueError, match="same .vocab_size, embedding_size."):
        Electra(tiny_config(), generator=ElectraForMaskedLM(tiny_config(embedding_size=16)))
    # the generator is not a discriminator: strict loading names the missing head
    with pytest.raises(ValueError, match="(?s)missing.*discriminator_predictions"):
        ElectraForPreTraining.from_pretrained(tmp_path / "disc" / "generator")
