"""predict.py: fill-mask and replaced-token detection from checkpoints saved in the test (BERT, RoBERTa,
ALBERT, an ELECTRA run directory), checked against the models' logits computed here; batching and
padding; an overfit model that must fill the right word; and the errors, from the library and the CLI."""
import io
import subprocess
import sys

import pytest
import torch

import predict
import tokenizer as tokenizers_lib
from albert import AlbertConfig, AlbertForPreTraining
from bert import BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification
from electra import Electra, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from helpers import perturb
from predict import PredictError
from roberta import RobertaConfig, RobertaForMaskedLM

ROOT = predict.Path(predict.__file__).parent
SUBJECTS = {"sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "night": "black", "blood": "red"}
SENTENCES = ([f"The color of the {s} is {c}." for s, c in SUBJECTS.items()] +
             ["The capital of France is Paris.", "Paris is a city in France.", "The chef ate the meal.",
              "A cat sat on the mat and the dog sat on the rug."]) * 10
TEXTS_WP = ["The capital of France is [MASK].",                                  # one mask
            "[MASK] is a <mask> in France, and the chef ate the [MASK] on the mat.",  # three, both placeholders
            "the [MASK]"]                                                        # short: padded in a batch
TEXTS_BPE = ["The capital of France is <mask>.", "<mask> is a [MASK] in France, and the chef ate the <mask>.",
             "A <mask>"]


def save(model, tok, path):
    model.save_pretrained(path)
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def wp_tok():
    return tokenizers_lib.train(SENTENCES, "wordpiece", vocab_size=150)


@pytest.fixture(scope="module")
def bpe_tok():
    return tokenizers_lib.train(SENTENCES, "bpe", vocab_size=300)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, wp_tok, bpe_tok):
    """Checkpoint directories of random models, their weights spread (perturb) so that distributions are peaked."""
    torch.manual_seed(0)
    root, wp = tmp_path_factory.mktemp("ckpts"), dict(vocab_size=wp_tok.vocab_size, pad_token_id=wp_tok.pad_id)
    d = {"bert": save(perturb(BertForMaskedLM(BertConfig.from_preset("tiny", **wp)), std=0.2), wp_tok, root / "bert"),
         "roberta": save(perturb(RobertaForMaskedLM(RobertaConfig.from_preset(
             "tiny", vocab_size=bpe_tok.vocab_size, pad_token_id=bpe_tok.pad_id)), std=0.2), bpe_tok, root / "roberta"),
         "electra": save(perturb(Electra(ElectraConfig.from_preset("tiny", **wp)), std=0.2), wp_tok, root / "electra")}
    return d


def direct_fill(model, tok, text, k):
    """What fill_mask must give, computed here from the model alone: one unpadded text, softmax at each mask."""
    text = text.replace("[MASK]", tok.mask_token).replace("<mask>", tok.mask_token)
    if tok.kind == "bpe":
        text = text.replace(" " + tok.mask_token, tok.mask_token)   # the space goes with the hidden word
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logits = model.eval()(ids, torch.ones_like(ids, dtype=torch.bool)).logits[0]     # (T, V)
    top = logits[ids[0] == tok.mask_id].softmax(-1).topk(k)                               # (M, k)
    return top.indices.tolist(), top.values.tolist()


def check_fills(model, tok, texts, k):
    got = predict.fill_mask(model, tok, texts, top_k=k)
    assert len(got) == len(texts)
    for text, masks in zip(texts, got):
        ids, probs = direct_fill(model, tok, text, k)
        assert len(masks) == text.count("[MASK]") + text.count("<mask>") == len(ids)
        for fillers, want_ids, want_p in zip(masks, ids, probs):
            assert len(fillers) == k
            p = [f.prob for f in fillers]
            assert p == sorted(p, reverse=True) and all(0 < x <= 1 for x in p) and sum(p) <= 1 + 1e-6
            assert [f.id for f in fillers] == want_ids
            torch.testing.assert_close(torch.tensor(p), torch.tensor(want_p), atol=1e-5, rtol=1e-4)
            assert [f.token for f in fillers] == [tok.decode([i], skip_special_tokens=False) for i in want_ids]
    # batched (padded to the longest) equals one text at a time, and batch_size splits nothing wrongly
    for batch_size in (16, 2):
        batched = predict.fill_mask(model, tok, texts, top_k=k, batch_size=batch_size)
        for text, masks in zip(texts, batched):
            alone = predict.fill_mask(model, tok, [text], top_k=k)[0]
            assert [[f.id for f in m] for m in masks] == [[f.id for f in m] for m in alone]
            torch.testing.assert_close(torch.tensor([[f.prob for f in m] for m in masks]),
                                       torch.tensor([[f.prob for f in m] for m in alone]), atol=1e-5, rtol=1e-4)
    return got


def test_fill_mask_bert(ckpts):
    model, tok = predict.load(ckpts["bert"])
    assert type(model) is BertForMaskedLM and not model.training
    got = check_fills(model, tok, TEXTS_WP, k=4)
    assert [len(m) for m in got] == [1, 3, 1]
    one = predict.fill_mask(model, tok, "the [MASK]", top_k=2)                      # a string is one text
    assert len(one) == 1 and [f.id for f in one[0][0]] == [f.id for f in got[2][0][:2]]
    # ids already masked, as train.py holds them mid-training: same fillers, dropout off, train mode given back
    b = tok.encode_batch([TEXTS_WP[0].replace("[MASK]", "paris"), "the cat"], padding=True, return_tensors="pt")
    assert tok.id_to_token(b["input_ids"][0, -3]) == "paris"
    b["input_ids"][0, -3] = tok.mask_id
    model.train()
    by_ids = predict.fill_mask_ids(model, tok, b["input_ids"], b["attention_mask"], top_k=4)
    assert model.training and by_ids[1] == [] and [f.id for f in by_ids[0][0]] == [f.id for f in got[0][0]]


def test_fill_mask_roberta_and_the_space_before_the_mask(ckpts, bpe_tok):
    model, tok = predict.load(ckpts["roberta"])
    assert type(model) is RobertaForMaskedLM
    check_fills(model, tok, TEXTS_BPE, k=3)
    # ' <mask>' stands for a word WITH its space ('Ġparis'): no lone 'Ġ' token before the mask
    ids = tok.encode(predict.prepare("The capital is <mask>.", tok))
    tokens = [tok.id_to_token(i) for i in ids]
    assert tokens[-4:] == ["Ġis", "<mask>", ".", "</s>"] and "Ġ" not in tokens
    assert tok.encode(predict.prepare("The capital is [MASK].", tok)) == ids
    assert tok.encode(predict.prepare("The capital is <mask>.", tok)) != tok.encode("The capital is <mask>.")
    word = next(t for t in sorted(tok.backend.get_vocab()) if t.startswith("Ġ") and t[1:].isalpha())
    assert predict.token_text(tok, tok.token_to_id(word)) == " " + word[1:]    # 'Ġis' is shown as ' is'


def test_pretraining_checkpoints_fill_with_their_mlm_head(tmp_path, wp_tok, capfd):
    """BertForPreTraining / AlbertForPreTraining runs load into the MaskedLM class, NSP/SOP head left out,
    with the same MLM logits as the pretraining model itself."""
    torch.manual_seed(1)
    uni = tokenizers_lib.train(SENTENCES, "unigram", vocab_size=100)
    for model, tok, name in (
            (BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=wp_tok.vocab_size)), wp_tok, "bert"),
            (AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=uni.vocab_size,
                                                           pad_token_id=uni.pad_id)), uni, "albert")):
        save(perturb(model, std=0.2), tok, tmp_path / name)
        loaded, tok = predict.load(tmp_path / name)
        assert type(loaded).__name__ == type(model).__name__.replace("PreTraining", "MaskedLM")
        text = "The [MASK] of France is [MASK]."
        got = predict.fill_mask(loaded, tok, [text], top_k=3)[0]
        assert [[f.id for f in m] for m in got] == direct_fill(model, tok, text, 3)[0]
    err = capfd.readouterr()
    assert "not used (another head's weights)" in err.err and "not used" not in err.out   # said on stderr


def test_electra_run_directory(ckpts, wp_tok, capsys):
    run = ckpts["electra"]
    model, tok = predict.load(run)                                   # the root holds the discriminator
    assert type(model) is ElectraForMaskedLM
    assert "using the generator in" in capsys.readouterr().err
    generator = ElectraForMaskedLM.from_pretrained(run / "generator")
    got = check_fills(model, tok, TEXTS_WP, k=3)
    assert [[f.id for f in m] for m in got[0]] == direct_fill(generator, tok, TEXTS_WP[0], 3)[0]
    assert type(predict.load(run / "generator")[0]) is ElectraForMaskedLM    # its tokenizer is in the root

    disc, tok = predict.load(run, task="rtd")
    assert type(disc) is ElectraForPreTraining
    texts = ["the chef ate the meal", "Paris is a city in France and the cat sat on the mat.", "sky"]
    verdicts = predict.detect_replaced(disc, tok, texts, batch_size=2)
    reference = ElectraForPreTraining.from_pretrained(run).eval()
    for text, vs in zip(texts, verdicts):
        ids = tok.encode(text)
        with torch.no_grad():
            p = torch.sigmoid(reference(torch.tensor([ids])).logits[0])[1:-1]          # not [CLS], [SEP]
        assert [v.id for v in vs] == ids[1:-1] == tok.encode(text, add_special_tokens=False)
        torch.testing.assert_close(torch.tensor([v.p_replaced for v in vs]), p, atol=1e-5, rtol=1e-4)
    assert [v.token for v in verdicts[0]] == "the chef ate the meal".split()


def test_overfit_model_fills_the_right_word(tmp_path, wp_tok):
    """A tiny BERT trained here to say the color of each thing: fill_mask must read the subject to answer."""
    torch.manual_seed(0)
    tok = wp_tok
    model = BertForMaskedLM(BertConfig.from_preset("tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    texts = [f"The color of the {s} is {c}." for s, c in SUBJECTS.items()]
    b = tok.encode_batch(texts, padding=True, return_tensors="pt")
    colors = torch.tensor([tok.token_to_id(c) for c in SUBJECTS.values()])
    at = b["input_ids"] == colors[:, None]                      # (B, T): where each color stands
    assert at.sum(1).tolist() == [1] * len(texts)
    inputs = b["input_ids"].masked_fill(at, tok.mask_id)
    labels = torch.where(at, b["input_ids"], -100)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # matrices this small train several times faster on one thread than on two
    try:
        for _ in range(60):
            loss = model(inputs, b["attention_mask"], b["token_type_ids"], labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model, tok = predict.load(save(model, tok, tmp_path / "overfit"))
    got = predict.fill_mask(model, tok, [f"the color of the {s} is [MASK] ." for s in SUBJECTS], top_k=2)
    assert [m[0][0].token for m in got] == list(SUBJECTS.values())
    assert all(m[0][0].prob > 0.5 for m in got)


def test_errors(ckpts, tmp_path, wp_tok, bpe_tok):
    model, tok = predict.load(ckpts["bert"])
    with pytest.raises(PredictError, match=r"no mask in 'the sky is blue': write \[MASK\]"):
        predict.fill_mask(model, tok, ["the [MASK] is", "the sky is blue"])
    roberta, rtok = predict.load(ckpts["roberta"])
    with pytest.raises(PredictError, match="write <mask> where a word is missing"):
        predict.fill_mask(roberta, rtok, ["no mask here"])
    with pytest.raises(PredictError, match="is 5.. tokens long.*at most 512"):
        predict.fill_mask(model, tok, ["the cat sat " * 180 + "[MASK]"])

    save(BertForSequenceClassification(BertConfig.from_preset("tiny", vocab_size=wp_tok.vocab_size)),
         wp_tok, tmp_path / "classifier")
    with pytest.raises(PredictError, match=r"\(BertForSequenceClassification\) has no MLM head"):
        predict.load(tmp_path / "classifier")
    disc = save(ElectraForPreTraining(ElectraConfig.from_preset("tiny", vocab_size=wp_tok.vocab_size)),
                wp_tok, tmp_path / "discriminator")                  # an HF discriminator: no generator/ beside it
    with pytest.raises(PredictError, match="ELECTRA discriminator, which has no MLM head.*generator/.*--rtd"):
        predict.load(disc)
    assert type(predict.load(disc, task="rtd")[0]) is ElectraForPreTraining
    with pytest.raises(PredictError, match="--rtd needs an ELECTRA discriminator.*is a bert model"):
        predict.load(ckpts["bert"], task="rtd")
    with pytest.raises(PredictError, match="this is a generator; pass its run directory"):
        predict.load(ckpts["electra"] / "generator", task="rtd")

    (tmp_path / "empty").mkdir()
    for path, what in ((tmp_path / "empty", "has no config.json"), (tmp_path / "nowhere", "does not exist"),
                       (ckpts["bert"] / "config.json", "is not a directory")):
        with pytest.raises(PredictError, match=f"is not a checkpoint directory: it {what}"):
            predict.load(path)
    # an MLM head, but a layer fewer than config.json says: an error, not random weights in its place
    short = save(BertForMaskedLM(BertConfig.from_preset("tiny", vocab_size=wp_tok.vocab_size)), wp_tok,
                 tmp_path / "short")
    (short / "config.json").write_text((short / "config.json").read_text().replace(
        '"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    with pytest.raises(PredictError, match=r"lacks 16 weights that BertForMaskedLM needs.*encoder\.layer\.2"):
        predict.load(short)
    # a tokenizer that does not belong to the model
    big = save(BertForMaskedLM(BertConfig.from_preset("tiny", vocab_size=wp_tok.vocab_size)), bpe_tok,
               tmp_path / "mismatch")
    with pytest.raises(PredictError, match="does not belong|do not belong"):
        predict.load(big)


def test_cli_in_process(ckpts, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("the [MASK] sat on the mat\n\nParis is a [MASK].\n"))
    predict.main([str(ckpts["bert"]), "-k", "2", "--batch-size", "1"])         # no text: lines from stdin
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "text 1: the [MASK] sat on the mat" and out[4] == "text 2: Paris is a [MASK]."
    assert out[1] == "  [MASK] 1 of 1" and [l.split(".")[0].strip() for l in out[2:4]] == ["1", "2"]

    predict.main(["--rtd", str(ckpts["electra"]), "the chef ate the meal", "--threshold", "0.3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "text 1: the chef ate the meal" and out[1].split() == ["token", "p_replaced"]
    rows = [l.split() for l in out[2:7]]
    assert [r[0] for r in rows] == ["'the'", "'chef'", "'ate'", "'the'", "'meal'"]
    flagged = [r[0].strip("'") for r in rows if float(r[1]) > 0.3]
    assert all((r[2:] == ["<-", "replaced"]) == (float(r[1]) > 0.3) for r in rows)
    assert out[7] == f"  replaced (p > 0.3): {', '.join(flagged) if flagged else 'none'}"


def run_cli(*args):
    return subprocess.run([sys.executable, "predict.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_subprocess(ckpts):
    r = run_cli(ckpts["roberta"], "-k", "3", "The capital of France is <mask>.", "A <mask> <mask> day.")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["text 1: The capital of France is <mask>.", "  <mask> 1 of 1"]
    assert [l.split()[0] for l in lines[2:5]] == ["1.", "2.", "3."]
    assert (lines[5], lines[6], lines[10]) == ("text 2: A <mask> <mask> day.", "  <mask> 1 of 2", "  <mask> 2 of 2")
    assert len(lines) == 14 and "Traceback" not in r.stderr

    r = run_cli(ckpts["bert"], "there is no mask in this")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.splitlines() == ["predict.py: error: no mask in 'there is no mask in this': write [MASK] where "
                                     "a word is missing (this tokenizer's mask token; [MASK] and <mask> both work)"]
