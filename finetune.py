"""Fine-tune a pretrained BERT, RoBERTa, ALBERT or ELECTRA on GLUE or on your own labelled text.

    python finetune.py --task sst2 --data-dir glue_data --init-from runs/bert        # one GLUE task
    python finetune.py --task all --data-dir glue_data --init-from electra-base-discriminator/ \
        --lr 1e-4 --layer-decay 0.8                                                  # all nine, one table
    python finetune.py --train reviews.csv --dev reviews_dev.csv --text-cols review --label-col stars \
        --init-from runs/roberta                                                     # your own data

--init-from is a run directory of train.py (for ELECTRA the discriminator, at the run's root) or a
Hugging Face checkpoint directory; its config.json's "model_type" picks the model file, and the
tokenizer comes from the same directory. A fresh classification head (num_labels = 1: regression,
MSE loss) goes on top, and the whole model is trained with the published recipe: AdamW without
weight decay on biases and LayerNorm, linear warm-up over --warmup-ratio of the steps then linear
decay to 0, shuffled batches padded to their longest row. After every epoch the dev set(s) are
scored with the task's official metric; the best epoch's model is kept. In --out (default
runs/finetune/TASK):

    best/                    model + tokenizer of the best epoch (Hugging Face layout, real label names)
    metrics.jsonl            one line per epoch: train loss, dev metrics, task score
    results.json             task, best dev metrics and epoch, label names, every argument

GLUE (--data-dir holds the folders of the standard download: CoLA/, SST-2/, MRPC/, STS-B/, QQP/,
MNLI/, QNLI/, RTE/, WNLI/) is scored as the papers do: Matthews correlation for CoLA, F1 and
accuracy for MRPC and QQP, Pearson and Spearman for STS-B, matched and mismatched accuracy for
MNLI, accuracy elsewhere. A task's score is the mean of its numbers (MNLI: of m and mm, so that
each of the nine tasks weighs the same), and --task all prints the average of the task scores,
WNLI included. (The BERT paper's "Average" is another convention: m and mm as two entries, one
metric for each other task -- F1 for MRPC and QQP, Spearman for STS-B -- and no WNLI.)

Your own data: a .csv, .tsv or .jsonl file with a header (or keys) naming the columns. The label
column is a regression target with --regression, or when every label is a number and not every
one is written as an integer ("3.5", "2.0"); otherwise its distinct values are the classes
(sorted, so "neg" < "pos" and 1 < 2 < 10). A .tsv is read without quoting, as GLUE's are.

--layer-decay D is ELECTRA's layer-wise learning-rate decay (google-research/electra,
model/optimization.py): depth 0 is the embeddings, depth i the i-th encoder layer (1..L), L + 1
the pooler, L + 2 the task head, and depth d trains at lr * D^(L + 2 - d): the head at lr, the
top layer at lr * D^2, the embeddings at lr * D^(L + 2). ALBERT shares one layer's weights
across its depth, so its L counts the groups of shared weights (1 in every published ALBERT):
the shared layer trains at lr * D^2 and the embeddings (with their E -> H projection) at lr * D^3.
"""
import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch

import tokenizer as tokenizers_lib
from cli import (FAMILIES, HelpFormatter, UsageError, add_setup_args, load_family, lr_factor, make_optimizer,
                 mixed_precision, pick_device, plain_warnings, progress, seed_everything, set_threads)


# ----------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class GlueTask:
    folder: str                 # under --data-dir
    text: tuple                 # column index of the text, or of the two texts of a pair
    label: int                  # column index of the label (-1 = the last column)
    labels: Optional[tuple]     # the classes, in id order (transformers' order); None = regression
    metrics: tuple              # official metrics, averaged into the task's score
    header: bool = True
    dev: tuple = ("dev",)       # dev files (without .tsv): MNLI has a matched and a mismatched one


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
GLUE_TASKS = {  # the columns of each task's train/dev files
    "cola": GlueTask("CoLA", (3,), 1, BINARY, ("mcc",), header=False),    # source, label, mark, sentence
    "sst2": GlueTask("SST-2", (0,), 1, BINARY, ("accuracy",)),            # sentence, label
    "mrpc": GlueTask("MRPC", (3, 4), 0, BINARY, ("f1", "accuracy")),      # Quality, #1 ID, #2 ID, #1 String, #2 String
    "stsb": GlueTask("STS-B", (7, 8), -1, None, ("pearson", "spearman")), # index, ..., sentence1, sentence2, score
    "qqp":  GlueTask("QQP", (3, 4), 5, BINARY, ("f1", "accuracy")),       # id, qid1, qid2, question1, question2, is_dup.
    "mnli": GlueTask("MNLI", (8, 9), -1, ("contradiction", "entailment", "neutral"), ("accuracy",),
                     dev=("dev_matched", "dev_mismatched")),              # ..., sentence1, sentence2, ..., gold_label
    "qnli": GlueTask("QNLI", (1, 2), 3, NLI2, ("accuracy",)),             # index, question, sentence, label
    "rte":  GlueTask("RTE", (1, 2), 3, NLI2, ("accuracy",)),              # index, sentence1, sentence2, label
    "wnli": GlueTask("WNLI", (1, 2), 3, BINARY, ("accuracy",)),           # index, sentence1, sentence2, label
}
DISPLAY = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
           "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
OWN_DATA_METRICS = {"classification": ("accuracy",), "regression": ("pearson", "spearman")}


class Split(NamedTuple):
    texts: list                 # one tuple per example: (a,) or (a, b)
    labels: list                # class names (str) or regression targets (float)


# ----------------------------------------------------------------------------- reading data

def glue_path(task, data_dir, split):
    return Path(data_dir) / GLUE_TASKS[task].folder / f"{split}.tsv"


def read_glue(task, data_dir, split):
    """One GLUE split ("train", "dev", MNLI's "dev_matched"/"dev_mismatched") as a Split.

    GLUE's TSVs hold unbalanced quotes, so they are read without quoting. Rows with fewer columns
    than the header are skipped: QQP's train and dev files have a few such broken lines.
    """
    if task not in GLUE_TASKS:
        raise UsageError(f"unknown GLUE task {task!r}; choose one of {', '.join(GLUE_TASKS)}")
    spec, path = GLUE_TASKS[task], glue_path(task, data_dir, split)
    if not path.is_file():
        raise UsageError(f"{DISPLAY[task]}: {path} not found (--data-dir holds the GLUE task folders "
                         f"{', '.join(t.folder for t in GLUE_TASKS.values())})")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    width = len(rows[0]) if spec.header and rows else max(*spec.text, spec.label) + 1
    texts, labels, skipped = [], [], 0
    for row in rows[1:] if spec.header else rows:
        if len(row) < width:
            skipped += 1
            continue
        texts.append(tuple(row[i] for i in spec.text))
        labels.append(row[spec.label])
    if spec.labels is None:
        try:
            labels = [float(y) for y in labels]
        except ValueError as e:
            raise UsageError(f"{path}: a score that is not a number ({e})") from None
    else:
        unknown = sorted(set(labels) - set(spec.labels))
        if unknown:
            raise UsageError(f"{path}: labels {unknown[:5]} are not {DISPLAY[task]}'s {list(spec.labels)}")
    if skipped:
        print(f"{path}: skipped {skipped} malformed row(s) with fewer than {width} columns")
    if not texts:
        raise UsageError(f"{path} holds no examples")
    return Split(texts, labels)


def read_table(path, text_cols, label_col):
    """Your own data: a .csv, .tsv or .jsonl file; text_cols names one or two text columns.

    Labels come back as strings (numbers too: "1", "3.5"), so that the caller decides between
    classes and a regression target, see label_kind().
    """
    path = Path(path)
    text_cols = [text_cols] if isinstance(text_cols, str) else list(text_cols)
    if not 1 <= len(text_cols) <= 2:
        raise UsageError(f"--text-cols names one text column or two (a pair), got {text_cols}")
    if not path.is_file():
        raise UsageError(f"{path} not found")
    kind = path.suffix.lower()
    if kind not in (".csv", ".tsv", ".jsonl"):
        raise UsageError(f"{path}: expected a .csv, .tsv or .jsonl file")
    with open(path, encoding="utf-8-sig", newline="") as f:
        if kind == ".jsonl":
            records = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise UsageError(f"{path}, line {n}: not JSON ({e})") from None
            columns = list(dict.fromkeys(k for _, r in records for k in r))
        else:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if kind == ".tsv" else csv.reader(f)
            columns, records = next(reader, []), []
            for row in filter(None, reader):                                   # blank lines are no rows
                if len(row) != len(columns):
                    raise UsageError(f"{path}, line {reader.line_num}: {len(row)} fields where the header "
                                     f"has {len(columns)}")
                records.append((reader.line_num, dict(zip(columns, row))))
    missing = [c for c in text_cols + [label_col] if c not in columns]
    if missing:
        raise UsageError(f"{path} has no column {', '.join(map(repr, missing))}; its columns are: "
                         f"{', '.join(columns) or '(none)'}")
    texts, labels = [], []
    for n, r in records:
        for c in text_cols + [label_col]:
            if r.get(c) is None or (c == label_col and r[c] == ""):     # an empty text is a text; no label is not
                raise UsageError(f"{path}, line {n}: no value in column {c!r}")
        texts.append(tuple(str(r[c]) for c in text_cols))
        labels.append(str(r[label_col]))
    if not texts:
        raise UsageError(f"{path} holds no examples")
    return Split(texts, labels)


def label_kind(labels, regression=False):
    """'regression' if asked, or if every label is a number and not all are written as integers;
    else 'classification' (integers such as 0/1 or 1..5 stars are classes)."""
    def is_number(s):
        try:
            return math.isfinite(float(s))
        except ValueError:
            return False

    def is_int(s):
        try:
            int(s)
            return True
        except ValueError:
            return False

    if regression or (all(is_number(y) for y in labels) and not all(is_int(y) for y in labels)):
        return "regression"
    return "classification"


def sorted_classes(labels):
    """The distinct labels in id order: numerically when they are all integers, else as strings."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def load_task(args):
    """(train Split, {dev name: Split}, class names in id order or None for regression)."""
    if args.task:
        if args.task not in GLUE_TASKS:
            raise UsageError(f"unknown GLUE task {args.task!r}; choose one of {', '.join(GLUE_TASKS)}")
        spec = GLUE_TASKS[args.task]
        train = read_glue(args.task, args.data_dir, "train")
        devs = {name: read_glue(args.task, args.data_dir, name) for name in spec.dev}
        return train, devs, list(spec.labels) if spec.labels else None
    cols = [c.strip() for c in args.text_cols.split(",")]
    train = read_table(args.train, cols, args.label_col)
    dev = read_table(args.dev, cols, args.label_col)
    if label_kind(train.labels, args.regression) == "regression":
        try:
            train = Split(train.texts, [float(y) for y in train.labels])
            dev = Split(dev.texts, [float(y) for y in dev.labels])
        except ValueError as e:
            raise UsageError(f"--regression needs numeric labels in column {args.label_col!r} ({e})") from None
        return train, {"dev": dev}, None
    classes = sorted_classes(train.labels)
    if len(classes) < 2:
        raise UsageError(f"{args.train}: column {args.label_col!r} holds one class only ({classes[0]!r})")
    unseen = sorted(set(dev.labels) - set(classes))
    if unseen:
        raise UsageError(f"{args.dev}: labels {unseen[:5]} are not in the train file's classes {classes[:20]}")
    return train, {"dev": dev}, classes


# ----------------------------------------------------------------------------- metrics

def _correlation(fn):
    def score(preds, labels):
        with warnings.catch_warnings():          # constant predictions (early on): undefined -> 0, no warning
            warnings.simplefilter("ignore")
            r = float(fn(preds, labels)[0])
        return 0.0 if math.isnan(r) else r
    return score


def _metric_fns():
    # imported here: scikit-learn and scipy take a second to import, and only scoring needs them
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    return {"accuracy": lambda p, y: float(accuracy_score(y, p)),
            "f1": lambda p, y: float(f1_score(y, p, zero_division=0)),   # binary: positive = class id 1
            "mcc": lambda p, y: float(matthews_corrcoef(y, p)),
            "pearson": _correlation(pearsonr),
            "spearman": _correlation(spearmanr)}


def compute_metrics(task, preds, labels):
    """{metric: value} of one dev set: task is a GLUE task or 'classification' / 'regression'.
    preds and labels are class ids, or real numbers for regression."""
    names = GLUE_TASKS[task].metrics if task in GLUE_TASKS else OWN_DATA_METRICS[task]
    fns = _metric_fns()
    preds, labels = list(preds), list(labels)
    return {m: fns[m](preds, labels) for m in names}


def task_score(metrics):
    """One number per task: the mean of its metrics over its dev sets (MNLI: of m and mm accuracy)."""
    values = [v for dev in metrics.values() for v in dev.values()]
    return sum(values) / len(values)


# ----------------------------------------------------------------------------- model, tokenizer, batches

def load_model(path, num_labels, random_init=False):
    """XForSequenceClassification of the family named by path/config.json's model_type. random_init: the
    architecture of path/config.json with random weights (none are read): the no-pretraining baseline."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UsageError(f"--init-from {path} is not a checkpoint directory: it has no config.json")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise UsageError(f"{path / 'config.json'} is not valid JSON ({e})") from None
    if model_type not in FAMILIES:
        raise UsageError(f"{path / 'config.json'} has model_type {model_type!r}; this repository fine-tunes "
                         f"{', '.join(FAMILIES)}")
    family = load_family(model_type)
    cls = family.classification
    try:    # from_pretrained warns, naming the freshly initialised head (and, in another warning, unused pretraining heads)
        if random_init:
            config = cls.config_class.from_dict({**json.loads((path / "config.json").read_text()),
                                                 "num_labels": num_labels})
            print(f"{cls.__name__}: every weight initialised at random (--random-init): no pretraining")
            return cls(config), family
        model = cls.from_pretrained(path, num_labels=num_labels)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    return model, family


# --lr when not given, by the model's hidden size. 1e-3 for H <= 128 is measured here (the tiny presets after a
# default train.py run: 2e-5 stays at chance, 1e-4 underfits in 3 epochs; README "Fine-tuning"); the others are the
# published recipes: ELECTRA-small (H 256) 3e-4, BERT-base and ELECTRA-base (H 768) 2e-5..1e-4, large 2e-5..5e-5.
DEFAULT_LR = ((128, 1e-3), (256, 3e-4), (512, 1e-4), (768, 5e-5), (float("inf"), 2e-5))


def default_lr(config):
    """The peak learning rate for a model of config.hidden_size, see DEFAULT_LR."""
    return next(lr for width, lr in DEFAULT_LR if config.hidden_size <= width)


def encode(tok, split, max_len):
    """Token ids and types per example, truncated (longest first) to max_len; padded later, per batch."""
    a = [t[0] for t in split.texts]
    b = [t[1] for t in split.texts] if len(split.texts[0]) == 2 else None
    enc = tok.encode_batch(a, b, max_length=max_len)
    return list(zip(enc["input_ids"], enc["token_type_ids"]))


def collate(rows, labels, pad_id, regression):
    """Pad to the longest row of this batch (not to --max-len): short batches cost less."""
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        token_type_ids[i, :len(types)] = torch.tensor(types)
    attention_mask = torch.arange(T)[None] < torch.tensor([len(ids) for ids, _ in rows])[:, None]  # (B, T)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.float if regression else torch.long)
    return batch


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def predict(model, rows, batch_size, pad_id, device, autocast, regression):
    """Class ids (or real numbers, for regression) for every row, in order."""
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], None, pad_id, regression).items()}
        with autocast:
            logits = model(**batch).logits.float()                             # (B, num_labels)
        out += (logits[:, 0] if regression else logits.argmax(-1)).tolist()
    model.train()
    return out


def save_best(model, tok, out, classes):
    """OUT/best written under a temporary name, then swapped in: a kill never leaves half a model."""
    tmp, old, best = out / f".best-tmp-{os.getpid()}", out / f".best-old-{os.getpid()}", out / "best"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())   # real label names, so that pipelines show them
    if classes is None:
        config["problem_type"] = "regression"
    else:
        config["problem_type"] = "single_label_classification"
        config["id2label"] = {str(i): c for i, c in enumerate(classes)}
        config["label2id"] = {c: i for i, c in enumerate(classes)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok.save(tmp)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)


def finetune(args):
    """Fine-tune on one task (args.task, or args.train/args.dev) and return the results dict."""
    task = args.task or "custom"
    out = Path(args.out or f"runs/finetune/{task}")
    train, devs, classes = load_task(args)
    regression = classes is None
    scoring = task if args.task else ("regression" if regression else "classification")

    device = pick_device(args.device)
    threads, why = set_threads(args.threads)
    seed_everything(args.seed)                      # the fresh head's init and the batch order follow --seed
    args.precision, autocast, scaler = mixed_precision(args.precision, device)

    model, family = load_model(args.init_from, 1 if regression else len(classes), args.random_init)
    source = args.tokenizer or args.init_from
    try:
        tok = tokenizers_lib.load(source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot load the tokenizer of {source}: {e} (give one with --tokenizer)") from None
    if tok.vocab_size > model.config.vocab_size:
        raise UsageError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary has "
                         f"{model.config.vocab_size}: use the tokenizer that came with the checkpoint")
    positions = model.config.max_position_embeddings - family.position_offset
    if args.max_len > positions:
        raise UsageError(f"--max-len {args.max_len} is longer than the model's {positions} positions")
    model.to(device)
    if args.lr is None:
        args.lr = default_lr(model.config)

    class_id = None if regression else {c: i for i, c in enumerate(classes)}
    targets = lambda split: split.labels if regression else [class_id[y] for y in split.labels]
    train_rows, train_y = encode(tok, train, args.max_len), targets(train)
    dev_rows = {name: encode(tok, d, args.max_len) for name, d in devs.items()}
    dev_y = {name: targets(d) for name, d in devs.items()}

    steps_per_epoch = math.ceil(len(train_rows) / args.batch_size)
    total = steps_per_epoch * args.epochs
    schedule = argparse.Namespace(warmup=int(args.warmup_ratio * total), steps=total, schedule="linear")
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.layer_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, schedule.warmup, schedule.steps))

    out.mkdir(parents=True, exist_ok=True)
    log = (out / "metrics.jsonl").open("w")
    head = "regression (MSE)" if regression else f"{len(classes)} classes"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{task}: {len(train_rows)} train / {', '.join(f'{len(r)} {n}' for n, r in dev_rows.items())} examples, "
          f"{head}; {type(model).__name__} {'at random, shaped as' if args.random_init else 'from'} {args.init_from} "
          f"({n_params / 1e6:.1f}M), {device}" + (f" ({threads} thread{'s' * (threads > 1)}: {why})"
                                                   if device.type == "cpu" else "") + " "
          f"{args.precision}; {args.epochs} epochs x {steps_per_epoch} steps of {args.batch_size}, lr {args.lr}"
          + (f", layer decay {args.layer_decay}" if args.layer_decay else ""))

    bar = progress(total, desc=task)
    order = torch.Generator().manual_seed(args.seed)
    best, step, t0 = None, 0, time.perf_counter()
    model.train()
    for epoch in range(1, args.epochs + 1):
        loss_sum = torch.zeros((), device=device)
        perm = torch.randperm(len(train_rows), generator=order).tolist()       # shuffled, not length-sorted
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            batch = collate([train_rows[j] for j in idx], [train_y[j] for j in idx], tok.pad_id, regression)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip if args.clip > 0 else float("inf"))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            loss_sum += loss.detach()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        metrics = {name: compute_metrics(scoring, predict(model, rows, args.batch_size, tok.pad_id, device,
                                                           autocast, regression), dev_y[name])
                   for name, rows in dev_rows.items()}
        score = task_score(metrics)
        improved = best is None or score > best["score"]
        if improved:
            best = {"epoch": epoch, "score": score, "metrics": metrics}
            save_best(model, tok, out, classes)
        rec = {"epoch": epoch, "step": step, "train_loss": round(float(loss_sum) / steps_per_epoch, 5),
               "lr": max(scheduler.get_last_lr()), "metrics": metrics, "score": score, "best": improved,
               "elapsed_s": round(time.perf_counter() - t0, 1)}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.write(f"epoch {epoch}: train loss {rec['train_loss']:.4f}, " + "; ".join(
            f"{n} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for n, m in metrics.items())
            + (" (best)" if improved else ""))
    bar.close()
    log.close()

    results = {"task": task, "metrics": best["metrics"], "score": best["score"], "best_epoch": best["epoch"],
               "labels": classes, "train_examples": len(train_rows),
               "dev_examples": {n: len(r) for n, r in dev_rows.items()}, "best_dir": str(out / "best"),
               "args": vars(args)}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / "results.json")
    return results


# ----------------------------------------------------------------------------- the results table

def results_table(all_results):
    """The papers' table: per task its metrics (x100) and score, then the average of the scores."""
    lines = [f"{'task':8}{'metric':22}{'dev':>13}{'score':>8}"]
    for r in all_results:
        names = list(next(iter(r["metrics"].values())))
        if len(r["metrics"]) > 1:       # MNLI: matched / mismatched
            label = "m/mm " + "/".join(names)
            values = [v for m in r["metrics"].values() for v in m.values()]
        else:
            label = "/".join(names)
            values = list(next(iter(r["metrics"].values())).values())
        cell = "/".join(f"{100 * v:.1f}" for v in values)
        lines.append(f"{DISPLAY.get(r['task'], r['task']):8}{label:22}{cell:>13}{100 * r['score']:8.1f}")
    if len(all_results) > 1:
        avg = sum(r["score"] for r in all_results) / len(all_results)
        lines.append(f"{f'GLUE average ({len(all_results)} tasks)':43}{100 * avg:8.1f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=HelpFormatter)
    p.add_argument("--task", help=f"GLUE task: {', '.join(GLUE_TASKS)}, a comma-separated list, or all")
    p.add_argument("--data-dir", default="glue_data", help="folder of the GLUE task folders (CoLA/, SST-2/, ...)")
    p.add_argument("--skip-missing", action="store_true", help="with several tasks, skip those whose files are missing")
    p.add_argument("--train", help="your own data: a .csv, .tsv or .jsonl file with a header")
    p.add_argument("--dev", help="your own data: the dev file, same columns")
    p.add_argument("--text-cols", default="text", help="one text column, or two for pairs: a,b")
    p.add_argument("--label-col", default="label", help="the label column")
    p.add_argument("--regression", action="store_true", help="the label is a real number (MSE, Pearson/Spearman)")
    p.add_argument("--init-from", required=True, help="a train.py run directory or a Hugging Face checkpoint directory")
    p.add_argument("--random-init", action="store_true",
                   help="random weights in --init-from's architecture (its config.json and tokenizer): the "
                        "no-pretraining baseline")
    p.add_argument("--tokenizer", help="tokenizer directory or file (default: the --init-from directory's)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float,
                   help="peak learning rate (the head's, with --layer-decay); default by the model's hidden size H: "
                        + ", ".join(f"{lr:g} for H <= {w:g}" for w, lr in DEFAULT_LR[:-1])
                        + f", {DEFAULT_LR[-1][1]:g} above (small presets need a large one)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of the steps spent warming up")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay (not on biases and LayerNorm)")
    p.add_argument("--layer-decay", type=float, help="ELECTRA's layer-wise lr decay, e.g. 0.8 (default: off)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    p.add_argument("--max-len", type=int, default=128, help="tokens per example, special tokens included")
    add_setup_args(p, seed_help="seeds the fresh head's weights and the batch order")
    p.add_argument("--out", help="output directory (default: runs/finetune/TASK; with several tasks, OUT/TASK)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "max_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.warmup_ratio <= 1:
        p.error(f"--warmup-ratio must lie in [0, 1], got {args.warmup_ratio}")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        p.error(f"--layer-decay must lie in (0, 1], got {args.layer_decay}")
    return args


def check_task_args(args):
    """The tasks to run: GLUE tasks from --task, or [None] for --train/--dev."""
    if args.task and (args.train or args.dev):
        raise UsageError("give --task (GLUE) or --train/--dev (your own data), not both")
    if not args.task:
        if not (args.train and args.dev):
            raise UsageError("give --task (a GLUE task or all) or your own data with --train FILE --dev FILE")
        return [None]
    tasks = list(GLUE_TASKS) if args.task == "all" else [t.strip().lower() for t in args.task.split(",")]
    unknown = [t for t in tasks if t not in GLUE_TASKS]
    if unknown:
        raise UsageError(f"unknown --task {', '.join(map(repr, unknown))}; choose one of "
                         f"{', '.join(GLUE_TASKS)}, or all (or --train/--dev for your own data)")
    missing = {t: [str(glue_path(t, args.data_dir, s)) for s in ("train", *GLUE_TASKS[t].dev)
                   if not glue_path(t, args.data_dir, s).is_file()] for t in tasks}
    missing = {t: files for t, files in missing.items() if files}
    if missing and not (args.skip_missing and len(tasks) > 1):
        raise UsageError(f"missing GLUE files for {', '.join(DISPLAY[t] for t in missing)}: "
                         f"{', '.join(f for files in missing.values() for f in files)}"
                         + (" (--skip-missing runs the others)" if len(tasks) > 1 else ""))
    for t in missing:
        print(f"skipping {DISPLAY[t]}: missing {', '.join(missing[t])}")
    tasks = [t for t in tasks if t not in missing]
    if not tasks:
        raise UsageError(f"no GLUE task has its files under {args.data_dir}")
    return tasks


def main(argv=None):
    args = parse_args(argv)
    tasks = check_task_args(args)
    root = Path(args.out or "runs/finetune")
    results = []
    for task in tasks:              # one task: OUT (default runs/finetune/TASK); several: OUT/TASK each
        out = args.out if len(tasks) == 1 else str(root / task)
        results.append(finetune(argparse.Namespace(**{**vars(args), "task": task, "out": out})))
    if len(results) > 1:
        summary = {"tasks": {r["task"]: {"metrics": r["metrics"], "score": r["score"]} for r in results},
                   "average": sum(r["score"] for r in results) / len(results)}
        (root / "glue.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + results_table(results))
    print(f"best models and results.json in {', '.join(str(Path(r['best_dir']).parent) for r in results)}")
    return results


if __name__ == "__main__":
    plain_warnings("finetune.py")
    try:
        main()
    except UsageError as e:
        sys.exit(f"finetune.py: error: {e}")
