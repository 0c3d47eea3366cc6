"""experiment.py: the FLOP accounting against a hand computation, the steps each budget buys, the KJV task
builder, and one end-to-end run (BERT and ELECTRA pretrained through train.py, fine-tuned through
finetune.py, the random-init baseline) on a corpus and task the test writes itself."""
import csv
import json
import random

import pytest

import bert
import electra
import experiment

TOPICS = {"sea": "ship wave sail harbour fish salt tide boat anchor shore".split(),
          "farm": "field cow wheat barn plough hay sheep orchard harvest mud".split()}
COMMON = "the a and of was by with near under over".split()


def sentence(rng, topic):
    words = [rng.choice(TOPICS[topic] if rng.random() < 0.5 else COMMON) for _ in range(rng.randint(6, 12))]
    return " ".join(words).capitalize() + "."


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """corpus.txt (documents of one topic each), train.csv / dev.csv (a sentence -> its topic)."""
    d, rng = tmp_path_factory.mktemp("task"), random.Random(0)
    docs = ["\n".join(sentence(rng, t) for _ in range(6)) for t in list(TOPICS) * 30]
    (d / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    for split, n in (("train", 48), ("dev", 24)):
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((sentence(rng, t), t) for t in list(TOPICS) * (n // 2))
    return d


# ----------------------------------------------------------------------------- FLOPs by hand

def hand_encoder(L, H, I, T):
    return 6 * L * (4 * H * H + 2 * H * I) + 12 * L * T * H          # the projections and FFN, the attention


def hand_bert_step(V, T, B, f=0.15):
    """BERT-tiny mlm+nsp (L 2, H 128, I 512) per optimizer step of B x T tokens."""
    L, H, I = 2, 128, 512
    per_token = hand_encoder(L, H, I, T) + 6 * f * (H * H + H * V) + 6 * (H * H + 2 * H) / T
    return per_token * B * T


def hand_electra_step(V, T, B, f=0.15):
    """ELECTRA-tiny rtd: the 1/4 generator (H 32, I 128, 2 layers, E 128 -> 32 projection, MLM head 32 -> 128
    -> V at the masked tokens) + the discriminator (H = E = 128: no projection) + its head at every token."""
    E, Hg, Ig, H, I = 128, 32, 128, 128, 512
    generator = hand_encoder(2, Hg, Ig, T) + 6 * E * Hg + 6 * f * (Hg * E + E * V)
    discriminator = hand_encoder(2, H, I, T) + 6 * (H * H + H)
    return (generator + discriminator) * B * T


@pytest.mark.parametrize("V,T,B", [(8192, 128, 32), (320, 32, 4)])
def test_flops_per_step_match_a_hand_computation(V, T, B):
    b = bert.BertConfig.from_preset("tiny", vocab_size=V)
    e = electra.ElectraConfig.from_preset("tiny", vocab_size=V)
    assert experiment.flops_per_step(b, "mlm+nsp", T, B) == pytest.approx(hand_bert_step(V, T, B), rel=1e-12)
    assert experiment.flops_per_step(e, "rtd", T, B) == pytest.approx(hand_electra_step(V, T, B), rel=1e-12)
    # twice the masking rate: the MLM heads' share doubles, nothing else
    assert experiment.flops_per_step(b, "mlm+nsp", T, B, mlm_fraction=0.3) == pytest.approx(
        hand_bert_step(V, T, B, f=0.3), rel=1e-12)
    assert experiment.flops_per_step(b, "mlm+nsp", T, B, grad_accum=3) == pytest.approx(
        3 * hand_bert_step(V, T, B), rel=1e-12)


def test_a_budget_buys_each_family_its_own_steps():
    args = experiment.parse_args(["--data", __file__, "--train", __file__, "--dev", __file__])
    budget = 1000 * hand_bert_step(8192, 128, 32)
    steps_b, flops_b, _ = experiment.plan_run(experiment.Variant("bert", "bert"), budget, args, 8192)
    steps_e, flops_e, _ = experiment.plan_run(experiment.Variant("electra", "electra"), budget, args, 8192)
    assert (steps_b, flops_b) == (1000, pytest.approx(hand_bert_step(8192, 128, 32)))
    assert steps_e == round(budget / hand_electra_step(8192, 128, 32)) < 1000   # ELECTRA's step costs more
    # the vocabulary is padded to a multiple of 64 as train.py pads it; flags that change the cost count
    _, padded, _ = experiment.plan_run(experiment.Variant("bert", "bert"), budget, args, 8150)
    assert padded == pytest.approx(hand_bert_step(8192, 128, 32))
    v = experiment.Variant.parse("b30=bert --mask-rate 0.3 --batch-size 16 --set num_hidden_layers=4")
    assert (v.name, v.family) == ("b30", "bert")
    _, cost, config = experiment.plan_run(v, budget, args, 8192)
    assert config.num_hidden_layers == 4
    four_layers = (2 * hand_encoder(2, 128, 512, 128) + 6 * 0.3 * (128 * 128 + 128 * 8192)
                   + 6 * (128 * 128 + 2 * 128) / 128) * 16 * 128
    assert cost == pytest.approx(four_layers, rel=1e-12)
    assert experiment.steps_for_budget(1.0, 1e9) == 1                                 # at least one step


# ----------------------------------------------------------------------------- the KJV task

def fake_bible(path):
    """Every book in the `bible -l100000` layout, 2 chapters of 8 verses that name their book."""
    rng, lines, n = random.Random(1), [], 0
    for book in experiment.BOOK_GROUP:
        for chapter in (1, 2):
            lines += ["", f"{'Psalm' if book == 'Psalms' else book} {chapter}", ""]
            for v in range(1, 9):
                n += 1
                lines.append(f"  {v} Verse {n} of {book} " + " ".join(rng.choice(COMMON) for _ in range(8)))
    path.write_text("\n".join(lines) + "\n")
    return n


@pytest.mark.parametrize("split_by", ["verse", "book"])
def test_prepare_kjv_holds_the_labelled_verses_out_of_the_corpus(tmp_path, split_by):
    n = fake_bible(tmp_path / "bible.txt")
    experiment.prepare_kjv(tmp_path / "bible.txt", tmp_path / "kjv", n_train=80, n_dev=40, split_by=split_by)
    rows = {s: list(csv.DictReader(open(tmp_path / "kjv" / f"{s}.csv"))) for s in ("train", "dev")}
    assert len(rows["train"]) + len(rows["dev"]) == 120
    for r in rows["train"] + rows["dev"]:                                 # the label is the verse's book's group
        assert r["text"].split(" of ", 1)[1].rsplit(" ", 8)[0] == r["book"]
        assert experiment.BOOK_GROUP[r["book"]] == r["label"]
    for split in rows.values():
        assert sorted({r["label"] for r in split}) == sorted(experiment.KJV_GROUPS)
    counts = {s: [sum(r["label"] == g for r in rows[s]) for g in experiment.KJV_GROUPS] for s in rows}
    if split_by == "verse":                                               # exact sizes, balanced classes
        assert counts == {"train": [20] * 4, "dev": [10] * 4}
    else:                                                                 # whole books on each side, ~10 dev a group
        assert not {r["book"] for r in rows["train"]} & {r["book"] for r in rows["dev"]}
        assert all(8 <= c <= 13 for c in counts["dev"]), counts
    corpus = (tmp_path / "kjv" / "corpus.txt").read_text()
    labelled = {r["text"] for r in rows["train"] + rows["dev"]}
    kept = [l for l in corpus.splitlines() if l]
    assert len(kept) == n - 120 and not labelled & set(kept)
    assert corpus.count("\n\n") == 2 * len(experiment.BOOK_GROUP) - 1    # a document per chapter


def test_prepare_kjv_refuses_a_partial_text(tmp_path):
    (tmp_path / "short.txt").write_text("Genesis 1\n\n  1 In the beginning.\n")
    with pytest.raises(experiment.UsageError, match="1 of the 66 books"):
        experiment.prepare_kjv(tmp_path / "short.txt", tmp_path / "x")


# ----------------------------------------------------------------------------- end to end

def test_experiment_end_to_end(task, tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["--data", str(task / "corpus.txt"), "--train", str(task / "train.csv"), "--dev", str(task / "dev.csv"),
            "--budgets", "1.5e9", "--seq-len", "32", "--batch-size", "4", "--vocab-size", "300",
            "--finetune-args", "--epochs 1 --batch-size 8 --max-len 32 --lr 1e-3", "--seeds", "0",
            "--jobs", "2", "--out", str(out)]
    results = experiment.main(argv)
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(results["runs"]))
    assert [r["variant"] for r in saved["runs"]] == ["bert", "electra"]
    assert sorted(b["family"] for b in saved["baselines"]) == ["bert", "electra"]
    for r in saved["runs"]:
        config = json.loads((out / "pretrain" / r["name"] / "config.json").read_text())
        V = config["vocab_size"]
        assert V % 64 == 0
        hand = (hand_bert_step if r["family"] == "bert" else hand_electra_step)(V, 32, 4)
        assert r["flops_per_step"] == pytest.approx(hand, rel=1e-12)
        assert r["steps"] == round(1.5e9 / hand) and r["flops"] == pytest.approx(r["steps"] * hand)
        log = [json.loads(l) for l in (out / "pretrain" / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert max(rec["step"] for rec in log) == r["steps"]             # train.py ran the planned steps
        assert r["held_out"]["step"] == r["steps"] and "val_loss" in r["held_out"]
        assert 0.0 <= r["score"] <= 1.0 and r["scores"] == [r["score"]] and r["std"] == 0.0
        ft = json.loads((out / "finetune" / f"{r['name']}-seed0" / "results.json").read_text())
        assert ft["score"] == r["score"] and ft["args"]["init_from"] == str(out / "pretrain" / r["name"])
    for b in saved["baselines"]:
        ft = json.loads((out / "finetune" / f"baseline-{b['family']}-seed0" / "results.json").read_text())
        assert ft["args"]["random_init"] and ft["score"] == b["score"]
    # the paths are relative to --out (no machine's absolute paths), and lead to the files from there
    assert (out / saved["train"]).resolve() == (task / "train.csv").resolve() and not saved["train"].startswith("/")
    assert [(out / d).resolve() for d in saved["data"]] == [(task / "corpus.txt").resolve()]
    assert sorted(b["dir"] for b in saved["baselines"]) == ["baseline/bert", "baseline/electra"]
    assert [r["pretrain_dir"] for r in saved["runs"]] == [f"pretrain/{r['name']}" for r in saved["runs"]]
    assert str(out) not in (out / "results.json").read_text() and str(task) not in (out / "results.json").read_text()
    # one shared tokenizer: BERT and ELECTRA read the same ids
    assert len(list((out / "pretrain" / "tokenizers").iterdir())) == 1
    table = experiment.results_table(saved)
    assert table.splitlines()[1].split() == ["FLOPs", "bert", "electra"]
    assert table.splitlines()[2].startswith("0 (random)") and table in printed
    plotted = any(line.startswith("plot: ") for line in printed.splitlines())
    assert plotted == (out / "curve.png").is_file() and (plotted or "no plot: matplotlib" in printed)

    # the same command again reuses every run: no subprocess, the same numbers
    logs = {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    again = experiment.main(argv)
    assert {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == logs
    assert [r["score"] for r in again["runs"]] == [r["score"] for r in results["runs"]]


def test_bad_arguments_are_named(task, capsys):
    with pytest.raises(SystemExit):
        experiment.parse_args(["--data", str(task / "corpus.txt"), "--train", str(task / "train.csv")])
    assert "--dev required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiment.parse_args(["--data", "x", "--train", str(task / "train.csv"), "--dev", str(task / "dev.csv"),
                               "--budgets", "1e15,-3"])
    assert "--budgets must be positive" in capsys.readouterr().err
    with pytest.raises(experiment.UsageError, match="unknown family 'gpt'"):
        experiment.Variant.parse("x=gpt --lr 1")
