"""train.py end to end on a tiny corpus: it trains, logs, checkpoints, resumes exactly, and
turns bad input into one clear error."""
import contextlib
import importlib
import json
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import data
import train

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon "
         "phi chi psi omega river mountain forest ocean desert valley island city village garden").split()


def write_corpus(folder, n_docs=60, seed=0):
    """Documents of a few sentences with a learnable structure (word pairs that co-occur)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for d in range(n_docs):
        sents = []
        for _ in range(rng.randint(3, 8)):
            w = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            sents.append(" ".join(f"{x} {WORDS[(WORDS.index(x) + 1) % len(WORDS)]}" for x in w).capitalize() + ".")
        docs.append(" ".join(sents))
    (folder / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    return folder


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    return write_corpus(tmp_path / "text")


def base_args(corpus, out, model="bert", **kw):
    args = {"--model": model, "--data": str(corpus), "--out": str(out), "--preset": "tiny",
            "--vocab-size": "200", "--steps": "30", "--batch-size": "8", "--seq-len": "48",
            "--lr": "2e-3", "--warmup": "3", "--eval-every": "15", "--eval-batches": "2",
            "--save-every": "15", "--log-every": "5", "--show": "1", **kw}
    return [x for k, v in args.items() for x in ((k,) if v is True else (k, v))]


@contextlib.contextmanager
def killed_after_checkpoint(at):
    """Within it, train.main is "killed" (KeyboardInterrupt) right after it writes the step-`at` checkpoint."""
    real_save = train.save_checkpoint

    def save_then_die(run_dir, step, *a, **k):
        real_save(run_dir, step, *a, **k)
        if step == at:
            raise KeyboardInterrupt
    train.save_checkpoint = save_then_die
    try:
        yield
    finally:
        train.save_checkpoint = real_save


def records(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_trains_logs_and_saves(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(base_args(corpus, out))
    recs = records(out)
    logs = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in logs] == [5, 10, 15, 20, 25, 30]
    assert {"step", "loss", "lr", "tokens_per_s", "mlm_acc", "nsp_acc", "data_ms", "step_ms"} <= set(logs[0])
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert {"val_loss", "val_mlm_acc", "val_nsp_acc"} <= set(evals[0])
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.5              # it learns
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    ckpt = out / "checkpoints" / "step_0000030"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "training_state.pt"):
        assert (ckpt / f).exists() and (out / f if f != "training_state.pt" else ckpt / f).exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000015", "step_0000030"]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    printed = capsys.readouterr().out
    assert "held-out:" in printed and "fill-mask" in printed


def test_resume_is_exact(corpus, tmp_path):
    """Stopping after the step-10 checkpoint and resuming gives the same weights and metrics
    as running straight through (CPU, fp32)."""
    common = {"--steps": "20", "--save-every": "10", "--eval-every": "10", "--show": "0"}
    straight = tmp_path / "straight"
    train.main(base_args(corpus, straight, **common))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt), killed_after_checkpoint(10):
        train.main(base_args(corpus, interrupted, **common))
    train.main(base_args(corpus, interrupted, **common, **{"--resume": True}))

    a = load_file(straight / "model.safetensors")
    b = load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "data_ms", "step_ms")} for r in rs]
    assert strip(records(straight)) == strip(records(interrupted))


def test_resume_refuses_changed_settings_and_missing_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(train.UsageError, match="no checkpoint"):
        train.main(base_args(corpus, out, **{"--resume": True}))
    train.main(base_args(corpus, out, **{"--steps": "5", "--save-every": "5", "--show": "0"}))
    with pytest.raises(train.UsageError, match="--seq-len 64"):
        train.main(base_args(corpus, out, **{"--steps": "10", "--seq-len": "64", "--resume": True}))
    train.main(base_args(corpus, out, **{"--steps": "10", "--save-every": "5", "--show": "0", "--resume": True}))
    assert (out / "checkpoints" / "step_0000010").exists()


def test_resume_takes_the_default_mask_rate_given_explicitly(corpus, tmp_path):
    """A run started without --mask-rate masked at the family's 0.15 and saved that rate: resuming it with
    --mask-rate 0.15 is the same setting, --mask-rate 0.3 a change. A run saved before the default was
    resolved (mask_rate None) compares the same way."""
    out = tmp_path / "run"
    train.main(base_args(corpus, out, **{"--steps": "4", "--save-every": "2", "--keep": "3", "--show": "0"}))
    state_file = out / "checkpoints" / "step_0000004" / "training_state.pt"
    assert torch.load(state_file, weights_only=True)["args"]["mask_rate"] == 0.15
    with pytest.raises(train.UsageError, match=r"--mask-rate 0.3 \(the run used 0.15\)"):
        train.main(base_args(corpus, out, **{"--steps": "6", "--mask-rate": "0.3", "--resume": True}))
    train.main(base_args(corpus, out, **{"--steps": "6", "--save-every": "2", "--keep": "3", "--show": "0",
                                         "--mask-rate": "0.15", "--resume": True}))
    # an older run's checkpoint, with the rate saved as None (and, as then, no manifest)
    older = torch.load(out / "checkpoints" / "step_0000006" / "training_state.pt", weights_only=True)
    older["args"]["mask_rate"] = None
    del older["manifest"]
    torch.save(older, out / "checkpoints" / "step_0000006" / "training_state.pt")
    (out / "checkpoints" / "step_0000006" / train.MANIFEST).unlink()
    with pytest.raises(train.UsageError, match=r"--mask-rate 0.3 \(the run used 0.15\)"):
        train.main(base_args(corpus, out, **{"--steps": "8", "--mask-rate": "0.3", "--resume": True}))
    train.main(base_args(corpus, out, **{"--steps": "8", "--save-every": "2", "--keep": "5", "--show": "0",
                                         "--mask-rate": "0.15", "--resume": True}))
    assert not list((out / "checkpoints").glob("replaced-*"))          # it resumed step 6, not an earlier one
    assert torch.load(out / "checkpoints" / "step_0000008" / "training_state.pt",
                      weights_only=True)["args"]["mask_rate"] == 0.15


def test_mlm_objective_and_init_from(corpus, tmp_path):
    out = tmp_path / "mlm"
    train.main(base_args(corpus, out, **{"--objective": "mlm", "--steps": "5", "--show": "0"}))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    # continue pretraining from that checkpoint (weights + its tokenizer)
    out2 = tmp_path / "cont"
    model = train.main(base_args(corpus, out2, **{"--objective": "mlm", "--steps": "2", "--show": "0",
                                                  "--init-from": str(out)}))
    assert model.config.vocab_size == json.loads((out / "config.json").read_text())["vocab_size"]


@pytest.mark.parametrize("extra, error, match", [
    ({"--data": "/no/such/place"}, data.DataError, "/no/such/place"),
    ({"--preset": "huge"}, train.UsageError, "unknown bert preset 'huge'"),
    ({"--objective": "rtd"}, train.UsageError, "mlm\\+nsp"),
    ({"--set": "hidden_size"}, train.UsageError, "KEY=VALUE"),
    ({"--pack": True}, train.UsageError, "--pack is for .*mlm, rtd.*mlm\\+nsp needs two segments"),
])
def test_bad_input_is_one_clear_error(corpus, tmp_path, extra, error, match):
    with pytest.raises(error, match=match):
        train.main(base_args(corpus, tmp_path / "run", **extra))


def test_bad_corpus_files(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n  \n")
    with pytest.raises(data.DataError, match="a.txt|empty"):
        train.main(base_args(corpus, tmp_path / "run", **{"--data": str(empty)}))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"hello\x00\xff\xfe world")
    with pytest.raises(data.DataError, match="bin.txt"):
        train.main(base_args(corpus, tmp_path / "run", **{"--data": str(binary)}))


def test_tokenizer_that_does_not_match_the_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    train.main(base_args(corpus, out, **{"--steps": "2", "--show": "0"}))
    rng = random.Random(1)
    other_text = [" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
                           for _ in range(20)) for _ in range(200)]
    bigger = importlib.import_module("tokenizer").train(other_text, kind="wordpiece", vocab_size=400,
                                                       min_frequency=1)
    bigger.save(tmp_path / "tok")
    assert bigger.vocab_size > json.loads((out / "config.json").read_text())["vocab_size"]
    with pytest.raises(train.UsageError, match="tokenizer has .* tokens but the model's vocabulary"):
        train.main(base_args(corpus, tmp_path / "run2", **{"--init-from": str(out), "--tokenizer": str(tmp_path / "tok")}))


def test_command_line_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--model", "bert", "--data", str(tmp_path / "missing")],
                       capture_output=True, text=True, cwd=train.__file__.rsplit("/", 1)[0])
    assert r.returncode != 0
    assert "missing" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "train.py", "--model", "gpt"], capture_output=True, text=True,
                       cwd=train.__file__.rsplit("/", 1)[0])
    assert r.returncode == 2 and "bert, roberta, albert, electra" in r.stderr


@pytest.mark.parametrize("model, architecture, metric", [
    ("roberta", "RobertaForMaskedLM", "mlm_acc"),
    ("albert", "AlbertForPreTraining", "sop_acc"),
    ("electra", "ElectraForPreTraining", "rtd_acc"),
])
def test_every_family_pretrains_with_its_objective(corpus, tmp_path, capsys, model, architecture, metric):
    out = tmp_path / model
    train.main(base_args(corpus, out, model=model, **{"--steps": "20", "--eval-every": "20", "--save-every": "20",
                                                      "--vocab-size": "300"}))
    logs = [r for r in records(out) if "loss" in r]
    assert metric in logs[0] and logs[-1]["loss"] < logs[0]["loss"]
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    kind = importlib.import_module(model).FAMILY.tokenizer_kind
    assert importlib.import_module("tokenizer").load(out).kind == kind
    printed = capsys.readouterr().out
    assert "fill-mask" in printed
    if model == "electra":                       # the generator beside the discriminator, and the display
        assert json.loads((out / "generator" / "config.json").read_text())["architectures"] == ["ElectraForMaskedLM"]
        assert "replaced-token detection" in printed


@pytest.mark.parametrize("model", ["bert", "electra"])
def test_pack_fills_rows_with_documents_kept_apart(corpus, tmp_path, monkeypatch, model):
    """--pack: no padding, and every forward pass gets the document_ids that keep the documents apart."""
    family = importlib.import_module(model)
    cls = family.FAMILY.pretraining["mlm" if model == "bert" else "rtd"]
    seen, forward = [], cls.forward

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("attention_mask"), kwargs.get("document_ids")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", spy)
    out = tmp_path / "run"
    extra = {"--pack": True, "--steps": "20", "--eval-every": "20", "--save-every": "20", "--show": "0"}
    train.main(base_args(corpus, out, model=model, **({"--objective": "mlm"} if model == "bert" else {}), **extra))
    assert len(seen) >= 20 and all(m.all() for m, _ in seen)                    # every row full
    assert all(d is not None and d.shape == m.shape for m, d in seen)
    assert max(int(d.max()) for _, d in seen) >= 1                             # rows that hold two documents
    logs = [r for r in records(out) if "loss" in r]
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_vocabulary_is_padded_to_a_multiple_of_64(corpus, tmp_path):
    """The model's vocabulary rounds the tokenizer's up (--pad-vocab 64 by default, 1 = off); an ELECTRA
    config records the tokenizer's size so that its generator never samples the padding."""
    tok = importlib.import_module("tokenizer")
    for model, pad in (("bert", None), ("electra", None), ("electra", "1")):
        out = tmp_path / f"{model}-{pad}"
        extra = {"--steps": "2", "--show": "0", "--vocab-size": "300", **({"--pad-vocab": pad} if pad else {})}
        train.main(base_args(corpus, out, model=model, **extra))
        n, config = tok.load(out).vocab_size, json.loads((out / "config.json").read_text())
        assert n % 64 != 0                                           # so that padding has something to do
        if pad == "1":
            assert config["vocab_size"] == n and config.get("tokenizer_vocab_size") is None
        else:
            assert config["vocab_size"] == -(-n // 64) * 64
            assert config.get("tokenizer_vocab_size") == (n if model == "electra" else None)


def test_encoding_flags_read_a_latin1_corpus(tmp_path, monkeypatch):
    """A latin-1 corpus: a clear error naming the fix, then --encoding latin-1 trains on the right text."""
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    folder = write_corpus(tmp_path / "text", n_docs=30)
    text = (folder / "corpus.txt").read_text().replace("river", "rivière")
    (folder / "corpus.txt").write_bytes(text.encode("latin-1"))
    common = {"--steps": "2", "--show": "0"}
    with pytest.raises(data.DataError, match="corpus.txt: not utf-8 .*--encoding latin-1"):
        train.main(base_args(folder, tmp_path / "run", **common))
    train.main(base_args(folder, tmp_path / "run", **common, **{"--encoding": "latin-1"}))
    tok = importlib.import_module("tokenizer").load(tmp_path / "run")
    assert tok.unk_id not in tok.encode("rivière") and "rivi" in tok.decode(tok.encode("rivière"))
