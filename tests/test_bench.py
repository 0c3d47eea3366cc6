"""bench.py: it runs for every family and prints one table with both sides and their ratio; the HF side is the
same architecture (same parameter count, same loss and the same training step from the same weights); the
FLOP count matches a hand computation; --padding counts real tokens; --data times the input pipeline."""
import re
import subprocess
import sys
import time

import pytest
import torch

import bench
import bert
import data

pytest.importorskip("transformers")

FAMILIES = ("bert", "roberta", "albert", "electra")
V = 300


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and far steadier on a CPU that other jobs share."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_args(model, *extra):
    return ["--model", model, "--preset", "tiny", "--vocab-size", str(V), "--batch-size", "2", "--seq-len", "24",
            "--steps", "2", "--warmup", "1", "--device", "cpu", *extra]


def table_rows(out):
    """The table's rows as {first cell: [the other cells]}."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| side"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------- the command

@pytest.mark.parametrize("model", FAMILIES)
def test_smoke_every_family_prints_both_sides_and_a_ratio(model, capsys):
    res = bench.main(tiny_args(model))
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == {"ours", "HF", "ours/HF"}
    for side in ("ours", "HF"):
        tokens_per_s, ms = (float(x.replace(",", "")) for x in rows[side][:2])
        assert tokens_per_s > 0 and ms > 0
        assert rows[side][3] == "n/a (CPU)"                     # no peak memory on a CPU, and no MFU column
        # ms/step is printed to 0.1 ms, so the true time lies within 0.05 ms of it; tokens/s to the unit
        assert 2 * 24 / ((ms + 0.05) / 1000) - 1 <= tokens_per_s <= 2 * 24 / ((ms - 0.05) / 1000) + 1
    assert re.fullmatch(r"\d+\.\d\dx", rows["ours/HF"][0])
    assert float(rows["ours/HF"][0][:-1]) == pytest.approx(res["ratio"], abs=0.006)
    header = next(line for line in out.splitlines() if line.startswith("| side"))
    assert "MFU" not in header and "sparse MLM head" in out and "attn_implementation='sdpa'" in out
    assert bench.HF_CLASSES[model, __import__(model).FAMILY.default_objective] in out


def test_padding_counts_real_tokens_only(capsys):
    args = tiny_args("bert", "--padding", "--min-len", "4")
    res = bench.main(args)
    out = capsys.readouterr().out
    # the same batches as bench.main draws: steps 1 and 2 (after the warm-up step 0) are timed
    config = bench.build_pair("bert", "tiny", vocab_size=V)[2]
    batches = bench.make_batches(config, "mlm+nsp", 2, 24, 3, padding=True, min_len=4, seed=0)
    real = [int(b["attention_mask"].sum()) for b in batches[1:]]
    assert sum(real) < 2 * 2 * 24                                     # the rows really are padded
    assert f"tokens per step ({sum(real) / 2:,.0f})" in out and "REAL (non-padding)" in out
    ours = res["rows"]["ours"]
    assert ours["tokens_per_s"] == pytest.approx(sum(real) / 2 / (ours["ms"] / 1000))


def test_data_pipeline_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    words = "alpha beta gamma delta epsilon river mountain forest ocean valley island city garden".split()
    docs = [" ".join(f"{words[(d + i) % len(words)].capitalize()} {words[(d * i) % len(words)]} and "
                     f"{words[(i + 3) % len(words)]}." for i in range(6)) for d in range(30)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    res = bench.main(["--model", "bert", "--data", "--data-files", str(tmp_path / "corpus.txt"), "--vocab-size", "120",
                      "--batch-size", "4", "--seq-len", "32", "--steps", "3", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "batches/s" in out and "input pipeline: bert mlm+nsp" in out
    assert res["batches_per_s"] > 0
    assert res["tokens_per_s"] == pytest.approx(res["batches_per_s"] * 4 * 32)
    assert 0 < res["real_tokens_per_s"] <= res["tokens_per_s"]


def test_usage_errors_are_one_line():
    with pytest.raises(bench.UsageError, match="unknown bert preset 'huge'"):
        bench.main(["--model", "bert", "--preset", "huge", "--device", "cpu"])
    with pytest.raises(bench.UsageError, match="no --objective 'mlm\\+nsp'"):
        bench.build_pair("roberta", "tiny", "mlm+nsp")
    r = subprocess.run([sys.executable, "bench.py", "--model", "bert", "--preset", "tiny", "--seq-len", "600",
                        "--device", "cpu"], cwd=bench.__file__.rsplit("/", 1)[0], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "bench.py: error: --seq-len 600 is longer than the model's 512 positions"


# ----------------------------------------------------------------------------- the same work on both sides

PAIRS = [(m, o) for (m, o) in bench.HF_CLASSES]                    # every (family, objective) bench.py runs


@pytest.mark.parametrize("model, objective", PAIRS)
def test_hf_side_is_the_same_architecture(model, objective):
    ours, hf, config = bench.build_pair(model, "tiny", objective, vocab_size=V)
    assert bench.n_params(ours) == bench.n_params(hf) > 0
    assert type(ours) is __import__(model).FAMILY.pretraining[objective]
    if objective == "rtd":                                            # one embeddings module, the output matrix tied
        emb = hf.discriminator.electra.embeddings
        assert hf.generator.electra.embeddings is emb
        assert hf.generator.generator_lm_head.weight is emb.word_embeddings.weight
        assert hf.generator.config.hidden_size == config.generator_config().hidden_size < config.hidden_size
    hf_models = [hf.generator, hf.discriminator] if objective == "rtd" else [hf]
    assert all(m.config._attn_implementation == "sdpa" for m in hf_models)


@pytest.mark.parametrize("model, objective", PAIRS)
def test_same_loss_at_init_on_a_padded_batch(model, objective):
    ours, hf, config = bench.build_pair(model, "tiny", objective, vocab_size=V)
    b = bench.make_batches(config, objective, 3, 20, 1, padding=True, min_len=6, seed=1)[0]
    ours.eval(), hf.eval()
    with torch.no_grad():
        torch.manual_seed(0)                                          # ELECTRA samples from the generator
        a = ours(**b).loss
        torch.manual_seed(0)
        h = hf(**b).loss
    assert torch.isfinite(a)
    torch.testing.assert_close(a, h, rtol=1e-5, atol=1e-5)


def test_one_training_step_is_the_same_on_both_sides():
    """No dropout, same weights, same batch: after one step (clip + AdamW) the second loss agrees too."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    ours, hf, config = bench.build_pair("bert", "tiny", vocab_size=V, overrides=no_dropout)
    b = bench.make_batches(config, "mlm+nsp", 2, 16, 1, seed=2)[0]
    losses = {}
    for name, m in (("ours", ours), ("HF", hf)):
        step, _ = bench.train_step_fn(m, "cpu", lr=1e-3)
        losses[name] = [float(step(b)) for _ in range(3)]
    assert losses["ours"][2] < losses["ours"][0]                     # it trains
    assert losses["ours"] == pytest.approx(losses["HF"], rel=1e-4)


def test_batches_mask_fifteen_percent_and_carry_sentence_labels():
    config = bench.build_pair("albert", "tiny", vocab_size=V)[2]
    b = bench.make_batches(config, "mlm+sop", 8, 64, 1, seed=0)[0]
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels", "sentence_order_label"}
    frac = (b["labels"] != -100).float().mean().item()
    assert 0.10 < frac < 0.20
    assert (b["labels"][:, 0] == -100).all()                         # [CLS] is never predicted
    assert b["token_type_ids"][:, -1].eq(1).all() and b["token_type_ids"][:, 0].eq(0).all()


# ----------------------------------------------------------------------------- timing and FLOPs

def test_time_interleaved_alternates_sides_and_skips_warmup():
    log = []

    def side(name, seconds):
        def step(batch):
            log.append((name, batch))
            time.sleep(seconds)
            return torch.tensor(float(batch))
        return step

    res = bench.time_interleaved({"a": side("a", 0.002), "b": side("b", 0.012)}, [0, 1, 2], warmup=1, n=4)
    assert log == [(s, i % 3) for i in range(5) for s in ("a", "b")]
    assert len(res["a"]["ms"]) == len(res["b"]["ms"]) == 4
    assert res["a"]["loss"] == [1.0, 2.0, 0.0, 1.0]                  # warm-up (batch 0) not recorded
    assert min(res["b"]["ms"]) >= 12 and min(res["a"]["ms"]) >= 2
    assert res["a"]["peak_bytes"] is None


def test_flops_per_token_bert_base_by_hand():
    # L = 12, H = 768, I = 3072, V = 30522, T = 128, MLM at f = 15% of the tokens:
    #   encoder matmuls   6 * 12 * (4 * 768^2 + 2 * 768 * 3072) = 6 * 12 * 7,077,888     = 509,607,936
    #   attention         12 * 12 * 128 * 768                                            =  14,155,776
    #   MLM head          6 * 0.15 * (768^2 + 768 * 30522) = 0.9 * 24,030,720             =  21,627,648
    #   pooler + NSP      6 * (768^2 + 2 * 768) / 128 = 6 * 591,360 / 128                 =      27,720
    expected = 509_607_936 + 14_155_776 + 21_627_648 + 27_720
    assert expected == 545_419_080
    config = bert.BertConfig.from_preset("base")
    assert bert.FAMILY.flops_per_token(config, 128) == pytest.approx(expected, rel=1e-12)
    # the plain MLM objective has no pooler/NSP term; padding shortens only the attention term
    assert bert.FAMILY.flops_per_token(config, 128, "mlm") == pytest.approx(expected - 27_720, rel=1e-12)
    assert bert.FAMILY.flops_per_token(config, 128, "mlm", attn_len=64) == pytest.approx(
        expected - 27_720 - 12 * 12 * 64 * 768, rel=1e-12)
