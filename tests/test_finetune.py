"""finetune.py: GLUE files read as the benchmark writes them, the official metrics, fine-tuning that
learns for every family (our run directories and a Hugging Face checkpoint), ELECTRA's layer-wise
learning rates, and bad input turned into one clear error."""
import csv
import json
import math
import random
import subprocess
import sys

import pytest
import torch

import albert
import bert
import cli
import electra
import finetune
import roberta
import tokenizer as tokenizers_lib
from cli import UsageError

WORDS = ("the a cat dog house river tree blue red small large runs sits quickly slowly over under "
         "near green old").split()
KEYWORD = "excellent"
TINY = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: per-op overhead dominates, and a second thread only adds waiting
    (a lot of it when the CPU is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- GLUE files

# Each task's files in the layout of the GLUE download (first rows of the real files, abridged),
# with the quirks: CoLA has no header, QQP has a row broken across two lines, the texts hold
# unbalanced quotes, MNLI's dev files have more columns than its train file.
def tsv(*rows):
    return "".join("\t".join(row) + "\n" for row in rows)


MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1"]


def mnli(s1, s2, label, dev=False):
    """Train: ..., label1, gold_label. Dev: ..., label1, ..., label5, gold_label."""
    n = 5 if dev else 1
    head = MNLI_HEAD + [f"label{i}" for i in range(2, n + 1)] + ["gold_label"]
    return tsv(head, ["0", "31193", "31193n", "government", "( ( x ) )", "( y )", "(ROOT x)", "(ROOT y)",
                      s1, s2, *[label] * n, label])


SENTS = ["index", "sentence1", "sentence2", "label"]
NLI = ["entailment", "not_entailment"]
AMROZI = ('Amrozi accused his brother , whom he called " the witness " .',
          'Referring to him as only " the witness " , Amrozi accused his brother .')
LIFE = ("How is the life of a math student?", "Which level of prep is enough?")
HORNY = ("How do I control my horny emotions?", "How do you control your horniness?")
DIGIMON = ("When did the third Digimon series begin?", "Unlike the two seasons before it, Tamers is darker.")
MANPADS = ("Which missile batteries often have individual launchers?",
           "When MANPADS is operated by specialists, batteries may have several dozen teams.")
IRAQ = ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.")
CARROT = ("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.", "The carrot had a hole.")
MNLI_TRAIN = ("Conceptually cream skimming has two basic dimensions.", "Product and geography are what make it work.")
MNLI_M = ("The new rights are nice enough", "Everyone really likes the newest benefits")
MNLI_MM = ("Your contribution helped make it possible.", 'Your contribution "did not help.')

GLUE_FILES = {
    "cola": {"CoLA/train.tsv": tsv(["gj04", "1", "", "Our friends won't buy this analysis, let alone the next one."],
                                   ["gj04", "0", "*", 'They drank the pub "dry.'])},
    "sst2": {"SST-2/train.tsv": tsv(["sentence", "label"], ["hide new secretions from the parental units ", "0"],
                                    ['it \'s a " charming and often affecting journey . ', "1"])},
    "mrpc": {"MRPC/train.tsv": tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                   ["1", "702876", "702977", *AMROZI],
                                   ["0", "2108705", "2108831", "Yucaipa owned Dominick 's \"",
                                    "Yucaipa bought Dominick 's in 1995 ."])},
    "stsb": {"STS-B/train.tsv": tsv(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                     "sentence1", "sentence2", "score"],
                                    ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                                     "A plane is taking off.", "An air plane is taking off.", "5.000"],
                                    ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
                                     'A man is playing a "flute.', "A man is playing a flute.", "3.800"])},
    "qqp": {"QQP/train.tsv": tsv(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                 ["133273", "213221", "213222", *LIFE, "0"],
                                 ["201841", "303951", "174364", 'How can I create an "Android app?'],  # one row broken
                                 ["", "How can I develop android app?", "1"],                         # in two: skipped
                                 ["402555", "536040", "536041", *HORNY, "1"])},
    "mnli": {"MNLI/train.tsv": mnli(*MNLI_TRAIN, "neutral"),
             "MNLI/dev_matched.tsv": mnli(*MNLI_M, "neutral", dev=True),
             "MNLI/dev_mismatched.tsv": mnli(*MNLI_MM, "contradiction", dev=True)},
    "qnli": {"QNLI/train.tsv": tsv(["index", "question", "sentence", "label"], ["0", *DIGIMON, "not_entailment"],
                                   ["1", *MANPADS, "entailment"])},
    "rte": {"RTE/train.tsv": tsv(SENTS, ["0", *IRAQ, "not_entailment"])},
    "wnli": {"WNLI/train.tsv": tsv(SENTS, ["0", *CARROT, "1"])},
}
GLUE_EXPECTED = {  # task -> split -> (texts, labels)
    "cola": {"train": ([("Our friends won't buy this analysis, let alone the next one.",),
                        ('They drank the pub "dry.',)], ["1", "0"])},
    "sst2": {"train": ([("hide new secretions from the parental units ",),
                        ('it \'s a " charming and often affecting journey . ',)], ["0", "1"])},
    "mrpc": {"train": ([AMROZI, ("Yucaipa owned Dominick 's \"", "Yucaipa bought Dominick 's in 1995 .")], ["1", "0"])},
    "stsb": {"train": ([("A plane is taking off.", "An air plane is taking off."),
                        ('A man is playing a "flute.', "A man is playing a flute.")], [5.0, 3.8])},
    "qqp": {"train": ([LIFE, HORNY], ["0", "1"])},
    "mnli": {"train": ([MNLI_TRAIN], ["neutral"]), "dev_matched": ([MNLI_M], ["neutral"]),
             "dev_mismatched": ([MNLI_MM], ["contradiction"])},
    "qnli": {"train": ([DIGIMON, MANPADS], ["not_entailment", "entailment"])},
    "rte": {"train": ([IRAQ], ["not_entailment"])},
    "wnli": {"train": ([CARROT], ["1"])},
}


def write_files(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("task", list(GLUE_FILES))
def test_read_glue_each_task_in_its_format(task, tmp_path, capsys):
    assert set(GLUE_EXPECTED) == set(finetune.GLUE_TASKS)
    write_files(tmp_path, GLUE_FILES[task])
    for split, (texts, labels) in GLUE_EXPECTED[task].items():
        got = finetune.read_glue(task, tmp_path, split)
        assert got.texts == texts
        assert got.labels == labels
    if task == "qqp":
        assert "skipped 2 malformed row(s)" in capsys.readouterr().out


def test_read_glue_missing_file_and_bad_label(tmp_path):
    with pytest.raises(UsageError, match=r"SST-2.*train.tsv not found"):
        finetune.read_glue("sst2", tmp_path, "train")
    write_files(tmp_path, {"RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n"})
    with pytest.raises(UsageError, match=r"\['maybe'\] are not RTE's"):
        finetune.read_glue("rte", tmp_path, "dev")


# ----------------------------------------------------------------------------- your own files

def test_read_table_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('id,review,other,stars\n1,"good, really",x,5\n2,"said ""no""",y,1\n')
    assert finetune.read_table(tmp_path / "a.csv", ["review"], "stars") == (
        [("good, really",), ('said "no"',)], ["5", "1"])
    (tmp_path / "a.tsv").write_text('q\tp\ty\nwhy "so\tbecause\tyes\n')    # TSV: quotes are text
    assert finetune.read_table(tmp_path / "a.tsv", ["q", "p"], "y") == ([('why "so', "because")], ["yes"])
    (tmp_path / "a.jsonl").write_text('{"t": "hi", "y": 0.5}\n\n{"t": "yo", "y": 2}\n')      # blank line skipped
    assert finetune.read_table(tmp_path / "a.jsonl", ["t"], "y") == ([("hi",), ("yo",)], ["0.5", "2"])
    with pytest.raises(UsageError, match=r"no column 'label'; its columns are: id, review, other, stars"):
        finetune.read_table(tmp_path / "a.csv", ["review"], "label")
    (tmp_path / "b.csv").write_text("text,label\nfine,1\nbroken\n")
    with pytest.raises(UsageError, match=r"b.csv, line 3: 1 fields where the header has 2"):
        finetune.read_table(tmp_path / "b.csv", ["text"], "label")


@pytest.mark.parametrize("labels, regression, kind", [
    (["0", "1", "1"], False, "classification"),
    (["1", "5", "3"], False, "classification"),        # star ratings written as integers are classes
    (["pos", "neg"], False, "classification"),
    (["0.5", "1", "4.25"], False, "regression"),       # a number with a fraction: a regression target
    (["2.0", "3.0"], False, "regression"),             # written as floats
    (["0", "1"], True, "regression"),                  # --regression
])
def test_label_kind(labels, regression, kind):
    assert finetune.label_kind(labels, regression) == kind


def test_sorted_classes():
    assert finetune.sorted_classes(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert finetune.sorted_classes(["pos", "neg", "pos"]) == ["neg", "pos"]


# ----------------------------------------------------------------------------- metrics

def test_metrics_against_hand_computed_values():
    # confusion matrix: tp 3, fn 1, fp 1, tn 2
    labels = [1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 0, 0]
    tp, fn, fp, tn = 3, 1, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))   # 5 / 12
    assert finetune.compute_metrics("cola", preds, labels) == pytest.approx({"mcc": mcc})
    assert mcc == pytest.approx(5 / 12)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    for task in ("mrpc", "qqp"):
        assert finetune.compute_metrics(task, preds, labels) == pytest.approx({"f1": f1, "accuracy": 5 / 7})
    for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert finetune.compute_metrics(task, preds, labels) == pytest.approx({"accuracy": 5 / 7})

    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    pearson = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    # Spearman without ties: 1 - 6 sum(d^2) / (n (n^2 - 1)) over the ranks
    ranks_y = [1, 3, 2, 4]                                   # of [1, 3, 2, 4] itself
    spearman = 1 - 6 * sum((a - b) ** 2 for a, b in zip([1, 2, 3, 4], ranks_y)) / (4 * 15)   # 0.8
    assert finetune.compute_metrics("stsb", x, y) == pytest.approx({"pearson": pearson, "spearman": 1.0})
    assert finetune.compute_metrics("stsb", x, [1.0, 3.0, 2.0, 4.0])["spearman"] == pytest.approx(spearman)
    assert spearman == pytest.approx(0.8)
    # constant predictions (a fresh regression head): no correlation, not NaN
    assert finetune.compute_metrics("regression", [0.3] * 4, y) == {"pearson": 0.0, "spearman": 0.0}


def test_task_score_and_glue_average_table():
    results = [
        {"task": "mrpc", "metrics": {"dev": {"f1": 0.8, "accuracy": 0.7}}},
        {"task": "mnli", "metrics": {"dev_matched": {"accuracy": 0.8}, "dev_mismatched": {"accuracy": 0.6}}},
        {"task": "cola", "metrics": {"dev": {"mcc": 0.4}}},
    ]
    for r in results:
        r["score"] = finetune.task_score(r["metrics"])
    assert [r["score"] for r in results] == pytest.approx([0.75, 0.7, 0.4])
    table = finetune.results_table(results).splitlines()
    assert table[1].split() == ["MRPC", "f1/accuracy", "80.0/70.0", "75.0"]
    assert table[2].split() == ["MNLI", "m/mm", "accuracy", "80.0/60.0", "70.0"]
    assert table[3].split() == ["CoLA", "mcc", "40.0", "40.0"]
    assert table[4].split() == ["GLUE", "average", "(3", "tasks)", f"{100 * (0.75 + 0.7 + 0.4) / 3:.1f}"]


# ----------------------------------------------------------------------------- checkpoints and synthetic tasks

def sentence(rng, n_keywords):
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
    for _ in range(n_keywords):
        words.insert(rng.randrange(len(words) + 1), KEYWORD)
    return " ".join(words)


def write_task(folder, n_train, n_dev, regression=False, seed=0):
    """A keyword decides the label ('pos' if present), or the target is how often it occurs (0-3)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        with open(folder / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for _ in range(n):
                k = rng.randint(0, 3) if regression else rng.randint(0, 1)
                w.writerow([sentence(rng, k), f"{k:.1f}" if regression else ("pos" if k else "neg")])
    return folder / "train.csv", folder / "dev.csv"


@pytest.fixture(scope="module")
def tokenizers():
    rng = random.Random(1)
    texts = [sentence(rng, rng.randint(0, 2)) for _ in range(300)]
    return {kind: tokenizers_lib.train(texts, kind, vocab_size=120 if kind != "bpe" else 300)
            for kind in tokenizers_lib.KINDS}


def make_checkpoint(folder, family, tok, seed=0):
    """A 'pretrained' checkpoint (random weights) in the layout train.py writes: model + tokenizer.
    ELECTRA: the discriminator at the root, the generator in generator/. Returns the saved model."""
    torch.manual_seed(seed)
    kw = dict(TINY, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
    if family == "bert":
        model = bert.BertForMaskedLM(bert.BertConfig(max_position_embeddings=128, **kw))
    elif family == "roberta":
        model = roberta.RobertaForMaskedLM(roberta.RobertaConfig(max_position_embeddings=130, **kw))
    elif family == "albert":
        model = albert.AlbertForMaskedLM(albert.AlbertConfig(max_position_embeddings=128, embedding_size=32, **kw))
    else:
        model = electra.Electra(electra.ElectraConfig(max_position_embeddings=128, embedding_size=32, **kw))
    model.save_pretrained(folder)
    tok.save(folder)
    return model


def run(*argv):
    return finetune.main([str(a) for a in argv])


def test_bert_learns_a_keyword_classification_task(tmp_path, tokenizers):
    ckpt = tmp_path / "bert"
    make_checkpoint(ckpt, "bert", tokenizers["wordpiece"])
    train, dev = write_task(tmp_path / "data", 480, 100)
    out = tmp_path / "out"
    [r] = run("--train", train, "--dev", dev, "--init-from", ckpt, "--out", out, "--epochs", 3,
              "--batch-size", 16, "--lr", "1e-3")
    print("classification dev accuracy", r["metrics"]["dev"]["accuracy"])
    assert r["metrics"]["dev"]["accuracy"] >= 0.9
    assert r["labels"] == ["neg", "pos"]
    # one metrics.jsonl line per epoch; results.json carries the arguments; best/ reloads and agrees
    epochs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert r["best_epoch"] == max(epochs, key=lambda e: e["score"])["epoch"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["args"]["lr"] == 1e-3 and saved["metrics"] == r["metrics"]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    model = bert.BertForSequenceClassification.from_pretrained(out / "best")           # strict: nothing fresh
    tok = tokenizers_lib.load(out / "best")
    rng = random.Random(5)
    texts = [sentence(rng, k) for k in (0, 1, 0, 1)]
    enc = tok.encode_batch(texts, return_tensors="pt")
    model.eval()
    assert model(**enc).logits.argmax(-1).tolist() == [0, 1, 0, 1]


def test_default_learning_rate_follows_the_model_size(tmp_path, tokenizers):
    """No --lr: 1e-3 for the tiny presets (2e-5, the old default, left a default train.py run at chance),
    the published recipes' for the larger ones; the lr used lands in results.json."""
    assert finetune.default_lr(bert.BertConfig.from_preset("tiny")) == 1e-3
    assert finetune.default_lr(electra.ElectraConfig.from_preset("small")) == 3e-4      # ELECTRA-small's
    assert finetune.default_lr(bert.BertConfig.from_preset("small")) == 1e-4
    assert finetune.default_lr(bert.BertConfig.from_preset("base")) == 5e-5
    assert finetune.default_lr(bert.BertConfig.from_preset("large")) == 2e-5
    ckpt = tmp_path / "bert"
    make_checkpoint(ckpt, "bert", tokenizers["wordpiece"])
    train, dev = write_task(tmp_path / "data", 480, 100)
    [r] = run("--train", train, "--dev", dev, "--init-from", ckpt, "--out", tmp_path / "out")   # every default
    assert r["args"]["lr"] == 1e-3 and r["args"]["epochs"] == 3
    assert r["metrics"]["dev"]["accuracy"] >= 0.9


def test_bert_learns_a_keyword_count_regression(tmp_path, tokenizers):
    ckpt = tmp_path / "bert"
    make_checkpoint(ckpt, "bert", tokenizers["wordpiece"])
    train, dev = write_task(tmp_path / "data", 480, 100, regression=True)
    [r] = run("--train", train, "--dev", dev, "--init-from", ckpt, "--out", tmp_path / "out", "--epochs", 4,
              "--batch-size", 16, "--lr", "1e-3")                        # "1.0", "2.0": regression, found alone
    print("regression dev pearson", r["metrics"]["dev"]["pearson"])
    assert r["labels"] is None
    assert r["metrics"]["dev"]["pearson"] > 0.8
    assert json.loads((tmp_path / "out" / "best" / "config.json").read_text())["problem_type"] == "regression"


@pytest.mark.parametrize("family, kind", [("roberta", "bpe"), ("albert", "unigram"), ("electra", "wordpiece")])
def test_every_family_fine_tunes_from_its_run_directory(family, kind, tmp_path, tokenizers, recwarn):
    ckpt = tmp_path / family
    saved = make_checkpoint(ckpt, family, tokenizers[kind])
    train, dev = write_task(tmp_path / "data", 64, 32)
    [r] = run("--train", train, "--dev", dev, "--init-from", ckpt, "--out", tmp_path / "out", "--epochs", 1,
              "--batch-size", 16, "--lr", "1e-3")
    assert 0 <= r["metrics"]["dev"]["accuracy"] <= 1 and r["best_epoch"] == 1
    # the head is new, and that is said once
    assert sum("initialised fresh" in str(w.message) for w in recwarn) == 1
    model, _ = finetune.load_model(ckpt, num_labels=2)
    assert type(model).__name__ == family.capitalize() + "ForSequenceClassification"
    if family == "electra":              # the discriminator (at the run dir's root) is what gets fine-tuned
        name = "encoder.layer.1.attention.self.query.weight"
        disc = saved.discriminator.electra.state_dict()[name]
        assert torch.equal(model.electra.state_dict()[name], disc)
        assert saved.generator.electra.state_dict()[name].shape != disc.shape     # not the (narrower) generator
        assert (ckpt / "generator" / "config.json").is_file()


def test_random_init_keeps_the_architecture_and_reads_no_weight(tmp_path, tokenizers, capsys):
    """--random-init: the no-pretraining baseline. The model is --init-from's architecture with weights
    drawn at random (seeded by --seed), so a folder with only config.json and the tokenizer is enough."""
    ckpt = tmp_path / "electra"
    make_checkpoint(ckpt, "electra", tokenizers["wordpiece"])
    pretrained, _ = finetune.load_model(ckpt, num_labels=3)
    torch.manual_seed(0)
    fresh, _ = finetune.load_model(ckpt, num_labels=3, random_init=True)
    assert "initialised at random" in capsys.readouterr().out
    want, got = pretrained.state_dict(), fresh.state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    weights = [k for k in want if k.endswith("weight") and "LayerNorm" not in k]       # norms start at 1
    assert weights and not any(torch.equal(got[k], want[k]) for k in weights)
    torch.manual_seed(0)
    again, _ = finetune.load_model(ckpt, num_labels=3, random_init=True)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in got.items())           # the seed decides
    bare = tmp_path / "bare"                                                              # no weights at all
    bare.mkdir()
    (bare / "config.json").write_text((ckpt / "config.json").read_text())
    tokenizers["wordpiece"].save(bare)
    train, dev = write_task(tmp_path / "data", 64, 32)
    [r] = run("--train", train, "--dev", dev, "--init-from", bare, "--random-init", "--out", tmp_path / "out",
              "--epochs", 1, "--batch-size", 16, "--lr", "1e-3")
    assert r["args"]["random_init"] and 0 <= r["score"] <= 1
    assert "at random, shaped as" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no config.json"):
        finetune.load_model(tmp_path / "data", num_labels=2, random_init=True)


def test_hugging_face_checkpoint_directory(tmp_path, tokenizers):
    transformers = pytest.importorskip("transformers")
    tok = tokenizers["wordpiece"]
    ckpt = tmp_path / "hf"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
    hf = transformers.BertForMaskedLM(config)
    hf.save_pretrained(ckpt)
    tok.save(ckpt)
    model, _ = finetune.load_model(ckpt, num_labels=2)
    name = "bert.encoder.layer.0.output.dense.weight"
    assert torch.equal(model.state_dict()[name], hf.state_dict()[name])
    train, dev = write_task(tmp_path / "data", 64, 32)
    [r] = run("--train", train, "--dev", dev, "--init-from", ckpt, "--out", tmp_path / "out", "--epochs", 1,
              "--batch-size", 16, "--lr", "1e-3")
    assert r["best_epoch"] == 1 and (tmp_path / "out" / "best" / "model.safetensors").is_file()


def test_glue_all_runs_the_tasks_present_and_averages(tmp_path, tokenizers, capsys):
    ckpt = tmp_path / "bert"
    make_checkpoint(ckpt, "bert", tokenizers["wordpiece"])
    rng = random.Random(3)
    sst2 = lambda n: tsv(["sentence", "label"], *([sentence(rng, k), str(k)] for k in rng.choices([0, 1], k=n)))
    rte = lambda n: tsv(SENTS, *([str(i), sentence(rng, 0), sentence(rng, 1), rng.choice(NLI)] for i in range(n)))
    write_files(tmp_path / "glue", {"SST-2/train.tsv": sst2(32), "SST-2/dev.tsv": sst2(16),
                                    "RTE/train.tsv": rte(32), "RTE/dev.tsv": rte(16)})
    args = ["--task", "all", "--data-dir", tmp_path / "glue", "--init-from", ckpt, "--out", tmp_path / "out",
            "--epochs", 1, "--batch-size", 16]
    with pytest.raises(UsageError, match=r"missing GLUE files for CoLA, MRPC, STS-B, QQP, MNLI, QNLI, WNLI.*"
                                         r"--skip-missing"):
        run(*args)
    results = run(*args, "--skip-missing")
    assert [r["task"] for r in results] == ["sst2", "rte"]
    table = capsys.readouterr().out.split("task    metric")[-1]
    assert "GLUE average (2 tasks)" in table
    summary = json.loads((tmp_path / "out" / "glue.json").read_text())
    assert summary["average"] == pytest.approx((results[0]["score"] + results[1]["score"]) / 2)
    assert (tmp_path / "out" / "rte" / "results.json").is_file()


# ----------------------------------------------------------------------------- layer-wise learning rates

def lr_of(optimizer):
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_gives_lower_layers_smaller_learning_rates():
    d, lr = 0.5, 1e-3
    model = bert.BertForSequenceClassification(bert.BertConfig(vocab_size=50, **TINY))
    p = dict(model.named_parameters())
    got = lr_of(cli.make_optimizer(model, lr, 0.01, layer_decay=d))
    # L = 2 layers: head lr, pooler lr d, layer 1 lr d^2, layer 0 lr d^3, embeddings lr d^4 (ELECTRA's code)
    assert got[id(p["classifier.weight"])] == pytest.approx((lr, 0.01))
    assert got[id(p["classifier.bias"])] == pytest.approx((lr, 0.0))
    assert got[id(p["bert.pooler.dense.weight"])][0] == pytest.approx(lr * d)
    assert got[id(p["bert.encoder.layer.1.attention.self.query.weight"])][0] == pytest.approx(lr * d ** 2)
    assert got[id(p["bert.encoder.layer.0.output.dense.weight"])][0] == pytest.approx(lr * d ** 3)
    assert got[id(p["bert.encoder.layer.0.output.LayerNorm.weight"])] == pytest.approx((lr * d ** 3, 0.0))
    assert got[id(p["bert.embeddings.word_embeddings.weight"])] == pytest.approx((lr * d ** 4, 0.01))
    # without layer decay: one lr for all; still no weight decay on biases and LayerNorm
    flat = lr_of(cli.make_optimizer(model, lr, 0.01))
    assert {v[0] for v in flat.values()} == {lr}
    assert flat[id(p["bert.embeddings.LayerNorm.weight"])] == (lr, 0.0)

    el = electra.ElectraForSequenceClassification(electra.ElectraConfig(vocab_size=50, embedding_size=32, **TINY))
    p = dict(el.named_parameters())
    got = lr_of(cli.make_optimizer(el, lr, 0.01, layer_decay=d))
    assert got[id(p["classifier.out_proj.weight"])][0] == pytest.approx(lr)
    assert got[id(p["classifier.dense.weight"])][0] == pytest.approx(lr)
    assert got[id(p["electra.encoder.layer.1.intermediate.dense.weight"])][0] == pytest.approx(lr * d ** 2)
    assert got[id(p["electra.embeddings_project.weight"])][0] == pytest.approx(lr * d ** 4)

    # ALBERT: the one shared layer is one depth, L = 1: layer lr d^2, embeddings and E -> H lr d^3
    al = albert.AlbertForSequenceClassification(albert.AlbertConfig(vocab_size=50, embedding_size=32, **TINY))
    p = dict(al.named_parameters())
    got = lr_of(cli.make_optimizer(al, lr, 0.01, layer_decay=d))
    assert got[id(p["albert.pooler.weight"])][0] == pytest.approx(lr * d)
    shared = p["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"]
    assert got[id(shared)][0] == pytest.approx(lr * d ** 2)
    assert got[id(p["albert.encoder.embedding_hidden_mapping_in.weight"])][0] == pytest.approx(lr * d ** 3)
    assert got[id(p["albert.embeddings.word_embeddings.weight"])][0] == pytest.approx(lr * d ** 3)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_one_clear_error(tmp_path, tokenizers):
    ckpt = tmp_path / "bert"
    make_checkpoint(ckpt, "bert", tokenizers["wordpiece"])
    train, dev = write_task(tmp_path / "data", 8, 4)
    with pytest.raises(UsageError, match=r"unknown --task 'sst3'; choose one of cola, sst2, .*wnli, or all"):
        run("--task", "sst3", "--init-from", ckpt)
    with pytest.raises(UsageError, match=r"missing GLUE files for MRPC: .*MRPC/train.tsv"):
        run("--task", "mrpc", "--data-dir", tmp_path / "nowhere", "--init-from", ckpt)
    with pytest.raises(UsageError, match=r"no column 'stars'; its columns are: text, label"):
        run("--train", train, "--dev", dev, "--label-col", "stars", "--init-from", ckpt)
    with pytest.raises(UsageError, match=r"no column 'review'"):
        run("--train", train, "--dev", dev, "--text-cols", "text,review", "--init-from", ckpt)
    with pytest.raises(UsageError, match=r"is not a checkpoint directory: it has no config.json"):
        run("--train", train, "--dev", dev, "--init-from", tmp_path / "data")
    with pytest.raises(UsageError, match=r"give --task .* or your own data with --train FILE --dev FILE"):
        run("--init-from", ckpt)


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "finetune.py", "--task", "cola", "--data-dir", str(tmp_path),
                           "--init-from", str(tmp_path)], capture_output=True, text=True,
                          cwd=finetune.__file__.rsplit("/", 1)[0], timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"finetune.py: error: missing GLUE files for CoLA: {tmp_path}/CoLA/train.tsv, {tmp_path}/CoLA/dev.tsv"]
