"""Does pretraining pay downstream, and which objective pays more per FLOP? BERT vs ELECTRA at equal compute.

    python experiment.py --data corpus.txt --train train.csv --dev dev.csv          # BERT and ELECTRA, 3 budgets
    python experiment.py --data corpus/ --train t.csv --dev d.csv --budgets 3e12,1.2e13 \
        --variant "electra-t1=electra --set temperature=1.0"                        # add a recipe of your own

For every variant (by default `bert` and `electra`: train.py with the family's own recipe) and every
pretraining budget in FLOPs, train.py pretrains on --data for the number of steps that spends the budget,
and finetune.py fine-tunes the result on --train, scored on --dev. The no-pretraining baseline fine-tunes
each family's architecture from random weights (finetune.py --random-init) on the same data. The FLOPs
are counted as bench.py counts them, by the count each family declares (modeling.Family.flops_per_token:
the useful matmul FLOPs of a training step, ELECTRA's generator and discriminator both), so a budget B
gives each variant

    steps = round(B / (FAMILY.flops_per_token(config, seq_len, objective) x batch_size x seq_len))

and the steps x FLOPs/step it really spent is what the table and the plot show. One tokenizer per kind is
trained on --data once and shared by every run of that kind, so BERT and ELECTRA read the same ids.
train.py and finetune.py run as subprocesses through their command lines, --jobs at a time with
--threads each (OMP_NUM_THREADS): on a 2-core machine 2 x 1 thread beats 1 x 2 threads. Runs whose
command has not changed are reused from --out, so a curve can be extended a budget at a time. In --out
(default runs/experiment):

    results.json     every run: variant, family, budget, steps, FLOPs, dev score per seed, their mean; its
                     paths (data, runs) relative to --out, the folder it is written in
    curve.png        dev score against pretraining FLOPs, the baseline as a line (needs matplotlib)
    pretrain/NAME/   train.py run directories (--pretrain-dir), and tokenizers/: the shared tokenizers
    finetune/NAME-seedS/   finetune.py outputs; baseline/FAMILY: the architectures at random; logs/

--prepare-kjv turns the King James Bible, as Debian's bible-kjv prints it, into a held-out verse task:

    apt-get download bible-kjv bible-kjv-text && for d in bible-kjv*.deb; do dpkg-deb -x $d kjv; done
    kjv/usr/bin/bible -p kjv/usr/lib -l100000 "Gen1:1-Rev22:21" > kjv.txt
    python experiment.py --prepare-kjv kjv.txt data/kjv   # data/kjv/corpus.txt, train.csv, dev.csv

The task: a verse's book group (law and history, poetry and prophets, gospels and Acts, epistles and
Revelation), ~1,500 train / ~500 dev verses held out of the corpus, the dev verses from other books than
the train verses (--split-by verse: from the same books; a model trained from scratch then does as well as
a briefly pretrained one, by the books' own names and words).
"""
import argparse
import csv
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import data
import tokenizer as tokenizers_lib
from cli import FAMILIES, UsageError, load_family, parse_overrides, plain_warnings

HERE = Path(__file__).resolve().parent
# the train.py flags a variant may set that change what a step costs; the rest pass through untouched
_COST_FLAGS = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
for _flag in ("--preset", "--objective", "--seq-len", "--batch-size", "--grad-accum", "--vocab-size", "--pad-vocab",
              "--mask-rate"):
    _COST_FLAGS.add_argument(_flag)
_COST_FLAGS.add_argument("--set", action="append", default=[])


# ----------------------------------------------------------------------------- the KJV verse task

# the 66 books in order, and the four groups the verses are classified into (balanced classes)
KJV_GROUPS = {
    "law_history": "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1_Samuel 2_Samuel 1_Kings "
                   "2_Kings 1_Chronicles 2_Chronicles Ezra Nehemiah Esther",
    "poetry_prophets": "Job Psalms Proverbs Ecclesiastes Song_of_Solomon Isaiah Jeremiah Lamentations Ezekiel "
                       "Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi",
    "gospels_acts": "Matthew Mark Luke John Acts",
    "epistles_revelation": "Romans 1_Corinthians 2_Corinthians Galatians Ephesians Philippians Colossians "
                           "1_Thessalonians 2_Thessalonians 1_Timothy 2_Timothy Titus Philemon Hebrews James 1_Peter "
                           "2_Peter 1_John 2_John 3_John Jude Revelation",
}
BOOK_GROUP = {b.replace("_", " "): g for g, books in KJV_GROUPS.items() for b in books.split()}


def read_kjv(path):
    """[(book, chapter, verse text)] from `bible -l100000` output: 'Book N' headings, '  V text' verse lines."""
    verses, book, chapter = [], None, None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if m := re.fullmatch(r"\s+\d+ (.+)", line):
            if book is None:
                raise UsageError(f"{path}: a verse before any 'Book N' heading; is it the bible program's output?")
            verses.append((book, chapter, m.group(1).strip()))
        elif m := re.fullmatch(r"(\S.*?) (\d+)", line.strip()):
            book = "Psalms" if m.group(1) == "Psalm" else m.group(1)
            chapter = int(m.group(2))
    books = {b for b, _, _ in verses}
    if unknown := sorted(books - BOOK_GROUP.keys()):
        raise UsageError(f"{path}: books {unknown[:5]} are not the KJV's 66; print the whole text with "
                         '`bible -l100000 "Gen1:1-Rev22:21"`')
    if len(books) != len(BOOK_GROUP):
        raise UsageError(f"{path} holds {len(books)} of the 66 books: print all of them, \"Gen1:1-Rev22:21\"")
    return verses


def prepare_kjv(text, out, n_train=1500, n_dev=500, min_words=8, seed=0, split_by="book"):
    """Write out/train.csv, out/dev.csv (text,label,book: the label is the verse's book group) and
    out/corpus.txt (every other verse, one a line, a blank line between chapters: train.py --data).
    The labelled verses are held out of the corpus, so no pretraining run has read them. split_by "verse":
    train and dev verses drawn from the same books (balanced classes, n_train / n_dev exactly); "book":
    each group's books split between train and dev (~n_dev / 4 dev verses a group), so a dev verse's book,
    and the names and places only it holds, were never seen labelled: what the corpus must teach."""
    verses = read_kjv(text)
    groups = list(KJV_GROUPS)
    if n_train % len(groups) or n_dev % len(groups):
        raise UsageError(f"train/dev sizes must be multiples of the {len(groups)} classes")
    if split_by not in ("verse", "book"):
        raise UsageError(f"split_by {split_by!r}: choose verse or book")
    rng, book_rng = random.Random(seed), random.Random(seed + 1)
    picked = {}                                                   # verse index -> "train" / "dev"
    per_dev = n_dev // len(groups)
    for g in groups:
        pool = [i for i, (b, _, v) in enumerate(verses) if BOOK_GROUP[b] == g and len(v.split()) >= min_words]
        chosen = rng.sample(pool, (n_train + n_dev) // len(groups))
        if split_by == "verse":
            for k, i in enumerate(chosen):
                picked[i] = "train" if k < n_train // len(groups) else "dev"
            continue
        books = list(dict.fromkeys(verses[i][0] for i in chosen))
        book_rng.shuffle(books)
        dev_books, n = set(), 0
        for b in books:                                           # whole books into dev, up to ~per_dev verses
            k = sum(verses[i][0] == b for i in chosen)
            if n < 0.8 * per_dev and n + k <= 1.25 * per_dev:
                dev_books.add(b)
                n += k
        for i in chosen:
            picked[i] = "dev" if verses[i][0] in dev_books else "train"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        rows = [(verses[i][2], BOOK_GROUP[verses[i][0]], verses[i][0]) for i in sorted(picked) if picked[i] == split]
        rng.shuffle(rows)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "book"])
            w.writerows(rows)
    lines, last = [], None
    for i, (b, c, v) in enumerate(verses):
        if (b, c) != last and lines:
            lines.append("")                                      # a chapter is a document
        last = (b, c)
        if i not in picked:
            lines.append(v)
    (out / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    n = {split: sum(v == split for v in picked.values()) for split in ("train", "dev")}
    print(f"{out}: corpus.txt ({len(verses) - len(picked)} verses), train.csv ({n['train']}), dev.csv ({n['dev']}"
          f"{', from other books than train' if split_by == 'book' else ''}); {len(groups)} classes: {', '.join(groups)}")


# ----------------------------------------------------------------------------- FLOPs and steps

def model_config(family, preset, vocab_size, overrides=()):
    """The config train.py builds for a new model: the preset, the (padded) vocabulary, --set overrides."""
    return load_family(family).config.from_preset(preset, vocab_size=vocab_size, **parse_overrides(overrides))


def flops_per_step(config, objective, seq_len, batch_size, grad_accum=1, mlm_fraction=0.15):
    """The family's flops_per_token x the tokens of one optimizer step (batch x seq x accumulation)."""
    family = load_family(config.model_type)
    return family.flops_per_token(config, seq_len, objective, mlm_fraction) * batch_size * seq_len * grad_accum


def steps_for_budget(budget, step_flops):
    """The optimizer steps that spend `budget` FLOPs (at least one)."""
    return max(1, round(budget / step_flops))


# ----------------------------------------------------------------------------- variants and runs

class Variant:
    """One pretraining recipe: a name for the table, a family, and extra train.py flags (the family's own
    recipe when there are none). `cost` reads the flags that change a step's FLOPs."""

    def __init__(self, name, family, args=()):
        if family not in FAMILIES:
            raise UsageError(f"variant {name!r}: unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        self.name, self.family, self.args = name, family, list(args)
        self.cost = _COST_FLAGS.parse_known_args(self.args)[0]

    @classmethod
    def parse(cls, spec):
        """'NAME=FAMILY --flag value ...' (or just 'FAMILY')."""
        name, _, rest = spec.partition("=") if "=" in spec.split(" ", 1)[0] else (None, "", spec)
        words = shlex.split(rest)
        if not words:
            raise UsageError(f"--variant {spec!r}: expected NAME=FAMILY [train.py flags], e.g. "
                             "\"electra-t1=electra --set temperature=1.0\"")
        return cls(name or words[0], words[0], words[1:])


def objective_of(variant):
    return variant.cost.objective or load_family(variant.family).default_objective


def plan_run(variant, budget, args, vocab_size):
    """(steps, FLOPs per step, the config) of `variant` spending `budget`."""
    c = variant.cost
    pad = int(c.pad_vocab or 64)
    config = model_config(variant.family, c.preset or args.preset, -(-vocab_size // pad) * pad, c.set)
    step_flops = flops_per_step(config, objective_of(variant), int(c.seq_len or args.seq_len),
                                int(c.batch_size or args.batch_size), int(c.grad_accum or 1),
                                float(c.mask_rate or 0.15))
    return steps_for_budget(budget, step_flops), step_flops, config


def run_logged(cmd, log, threads):
    """Run cmd with `threads` OpenMP threads, its output into `log`; raise with the log's tail on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(shlex.join(cmd) + "\n\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=HERE).returncode
    if rc:
        tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-15:]
        raise RuntimeError(f"{Path(cmd[1]).name} failed (exit {rc}); {log}:\n  " + "\n  ".join(tail))


def done_before(folder, marker, cmd):
    """True if `folder` holds `marker` and was made by exactly `cmd` (so the run can be reused)."""
    stamp = folder / "experiment.json"
    return (folder / marker).is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("command") == cmd


def stamp(folder, cmd):
    (folder / "experiment.json").write_text(json.dumps({"command": cmd}) + "\n")


# ----------------------------------------------------------------------------- the experiment

def shared_tokenizer(kind, vocab_size, files, folder):
    """One tokenizer of `kind` trained on the corpus, saved under `folder` (beside the pretraining runs) and
    reused while the corpus is unchanged (WordPiece breaks ties in hash order: two trainings can number
    tokens differently, and the runs that read one must be reused with it)."""
    import hashlib
    key = hashlib.sha1(json.dumps(data.files_fingerprint(files)).encode()).hexdigest()[:12]
    folder = folder / f"{kind}-{vocab_size}-{key}"
    if not (folder / "tokenizer.json").is_file():
        print(f"training a {kind} tokenizer ({vocab_size} tokens) on {len(files)} file(s) ...", flush=True)
        tokenizers_lib.train([str(f) for f in files], kind=kind, vocab_size=vocab_size).save(folder)
    return folder, tokenizers_lib.load(folder).vocab_size


def finetune_command(args, init_from, out, seed, random_init=False):
    cmd = [sys.executable, str(HERE / "finetune.py"), "--train", str(args.train), "--dev", str(args.dev),
           "--text-cols", args.text_cols, "--label-col", args.label_col, "--init-from", str(init_from),
           "--out", str(out), "--seed", str(seed)]
    return cmd + (["--random-init"] if random_init else []) + shlex.split(args.finetune_args)


def finetune_scores(args, init_from, name, random_init=False):
    """Fine-tune init_from once per --seeds seed; [(seed, dev score)]."""
    scores = []
    for seed in args.seeds:
        out = args.out / "finetune" / f"{name}-seed{seed}"
        cmd = finetune_command(args, init_from, out, seed, random_init)
        if not done_before(out, "results.json", cmd):
            run_logged(cmd, args.out / "logs" / f"finetune-{name}-seed{seed}.log", args.threads)
            stamp(out, cmd)
        scores.append((seed, json.loads((out / "results.json").read_text())["score"]))
    return scores


def pretrain_and_finetune(args, run):
    """train.py for run["steps"] steps, then finetune.py on the result: the run dict, completed."""
    v, folder = run["variant"], args.pretrain_dir / run["name"]
    steps = run["steps"]
    cmd = [sys.executable, str(HERE / "train.py"), "--model", v.family, "--preset", args.preset,
           "--data", *map(str, args.data), "--tokenizer", str(run["tokenizer"]), "--steps", str(steps),
           "--warmup", str(max(1, round(0.1 * steps))), "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--eval-every", str(steps), "--save-every", str(steps),
           "--show", "0", "--seed", str(args.pretrain_seed), "--out", str(folder), *v.args]
    t0 = time.perf_counter()
    if not done_before(folder, "config.json", cmd):
        run_logged(cmd, args.out / "logs" / f"pretrain-{run['name']}.log", args.threads)
        stamp(folder, cmd)
    run["pretrain_s"], run["pretrain_dir"] = round(time.perf_counter() - t0, 1), str(folder)
    # the FLOPs planned must be those of the model train.py built
    config = load_family(v.family).config.from_dict(json.loads((folder / "config.json").read_text()))
    c = v.cost
    built = flops_per_step(config, objective_of(v), int(c.seq_len or args.seq_len), int(c.batch_size or args.batch_size),
                           int(c.grad_accum or 1), float(c.mask_rate or 0.15))
    if abs(built - run["flops_per_step"]) > 1e-6 * built:
        raise RuntimeError(f"{folder}: the model train.py built costs {built:.4g} FLOPs per step, the plan "
                           f"{run['flops_per_step']:.4g}: a train.py flag of --variant {v.name!r} changes the "
                           "model in a way experiment.py does not know")
    held_out = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in l]
    run["held_out"] = held_out[-1] if held_out else None
    run["scores"] = finetune_scores(args, folder, run["name"])
    return run


def summarize(scores):
    values = [s for _, s in scores]
    mean = sum(values) / len(values)
    std = (sum((s - mean) ** 2 for s in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"scores": values, "seeds": [s for s, _ in scores], "score": mean, "std": std}


def _job(args, kind, item):
    """One unit of --jobs: a baseline's fine-tuning, or a run's pretraining + fine-tuning."""
    if kind == "baseline":
        item.update(summarize(finetune_scores(args, item["dir"], f"baseline-{item['family']}", random_init=True)))
    else:
        item.update(summarize(pretrain_and_finetune(args, item)["scores"]))
    return kind, item


def relative_to(path, folder):
    """`path` as seen from `folder` (e.g. ../../data/kjv/train.csv), so that results.json names no machine's
    absolute paths."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def run_experiment(args):
    files = data.resolve_data(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [Variant(f, f) for f in args.families] + [Variant.parse(s) for s in args.variant]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UsageError(f"variant names must differ: {names}")
    tokenizers = {}
    for v in variants:
        kind = load_family(v.family).tokenizer_kind
        vocab = int(v.cost.vocab_size or args.vocab_size)
        if (kind, vocab) not in tokenizers:
            tokenizers[kind, vocab] = shared_tokenizer(kind, vocab, files, args.pretrain_dir / "tokenizers")
        v.tokenizer, v.tokenizer_vocab = tokenizers[kind, vocab]

    runs = []
    for v in variants:
        for budget in args.budgets:
            steps, step_flops, _ = plan_run(v, budget, args, v.tokenizer_vocab)
            runs.append({"variant": v, "name": f"{v.name}-{budget:.3g}", "budget": budget, "steps": steps,
                         "flops_per_step": step_flops, "flops": steps * step_flops, "tokenizer": v.tokenizer})
    print(f"{len(runs)} pretraining runs, {len(args.seeds)} fine-tuning seed(s) each, {args.jobs} at a time "
          f"x {args.threads} thread(s):")
    for r in runs:
        print(f"  {r['name']:28} {r['steps']:6} steps x {r['flops_per_step']:.3e} FLOPs = {r['flops']:.3e}")

    # the no-pretraining baseline: each family's architecture with random weights (its config.json + tokenizer)
    baselines = []
    for v in {v.family: v for v in variants if not v.args}.values() if args.baseline else ():
        folder = args.out / "baseline" / v.family
        folder.mkdir(parents=True, exist_ok=True)
        pad = 64
        config = model_config(v.family, args.preset, -(-v.tokenizer_vocab // pad) * pad)
        (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        tokenizers_lib.load(v.tokenizer).save(folder)
        baselines.append({"family": v.family, "dir": folder})

    t0 = time.perf_counter()
    jobs = [("baseline", b) for b in baselines] + [("run", r) for r in runs]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_job, args, kind, item) for kind, item in jobs]
        for n, f in enumerate(futures, 1):
            kind, item = f.result()
            label = f"baseline {item['family']} (random init)" if kind == "baseline" else item["name"]
            print(f"[{n}/{len(futures)}] {label}: dev {item['score']:.4f} +- {item['std']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    rel = lambda path: relative_to(path, args.out)
    results = {"paths": "relative to the folder this file was written in (--out)",
               "train": rel(args.train), "dev": rel(args.dev), "data": [rel(f) for f in files],
               "preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size,
               "finetune_args": args.finetune_args, "seeds": args.seeds,
               "flops": "FAMILY.flops_per_token x batch_size x seq_len per optimizer step",
               "baselines": [{k: (rel(v) if k == "dir" else v) for k, v in b.items()} for b in baselines],
               "runs": [{**{k: (rel(v) if k == "pretrain_dir" else v) for k, v in r.items()
                            if k not in ("variant", "tokenizer")},
                         "variant": r["variant"].name, "family": r["variant"].family,
                         "train_args": r["variant"].args} for r in runs]}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + results_table(results))
    print(plot(results, args.out / "curve.png"))
    print(f"results: {args.out / 'results.json'}")
    return results


# ----------------------------------------------------------------------------- the table and the plot

def results_table(results):
    """Rows: the baseline, then the budgets; columns: the variants; cells: mean dev score +- std (steps)."""
    variants = list(dict.fromkeys(r["variant"] for r in results["runs"]))
    budgets = sorted({r["budget"] for r in results["runs"]})
    cell = {(r["variant"], r["budget"]): r for r in results["runs"]}
    n = len(results["seeds"])
    width = max([22] + [len(v) + 2 for v in variants])
    lines = [f"dev score (mean{' +- std' if n > 1 else ''} of {n} fine-tuning seed{'s' if n > 1 else ''}) "
             "against pretraining FLOPs",
             f"{'FLOPs':>10}  " + "".join(f"{v:>{width}}" for v in variants)]
    fmt = lambda r: f"{r['score']:.3f}" + (f" +-{r['std']:.3f}" if n > 1 else "")
    if results["baselines"]:
        base = {b["family"]: b for b in results["baselines"]}
        family = {r["variant"]: r["family"] for r in results["runs"]}
        lines.append(f"{'0 (random)':>10}  " + "".join(
            f"{fmt(base[family[v]]) if family[v] in base else '':>{width}}" for v in variants))
    for b in budgets:
        row = ""
        for v in variants:
            r = cell.get((v, b))
            row += f"{fmt(r) + ' (' + str(r['steps']) + ')' if r else '':>{width}}"
        lines.append(f"{b:>10.3g}  {row}")
    lines.append("(steps) = pretraining steps that spend the budget; FLOPs as the family's flops_per_token counts them")
    return "\n".join(lines)


def plot(results, path):
    """curve.png: dev score against pretraining FLOPs (log scale), a line per variant, the baselines dashed.
    Returns a line saying what was written (or why not: matplotlib is not a requirement)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib); the table above has the numbers"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for v in dict.fromkeys(r["variant"] for r in results["runs"]):
        rs = sorted((r for r in results["runs"] if r["variant"] == v), key=lambda r: r["flops"])
        ax.errorbar([r["flops"] for r in rs], [r["score"] for r in rs], yerr=[r["std"] for r in rs],
                    marker="o", capsize=3, label=v)
    for b in results["baselines"]:
        ax.axhline(b["score"], linestyle="--", color="gray", linewidth=1)
        ax.annotate(f"{b['family']}, no pretraining", (0.01, b["score"]), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=8, color="gray")
    ax.set_xscale("log")
    flops = sorted({r["flops"] for r in results["runs"]})
    if flops[-1] < 3 * flops[0]:               # one budget (or close ones): a tick at each, no crowded minor labels
        ax.set_xticks(flops, [f"{f:.2g}" for f in flops])
        ax.set_xlim(flops[0] / 1.5, flops[-1] * 1.5)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("pretraining FLOPs (FAMILY.flops_per_token)")
    ax.set_ylabel(f"dev score ({Path(results['dev']).name})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare-kjv", nargs=2, metavar=("BIBLE_TXT", "DIR"),
                   help="write DIR/corpus.txt, train.csv, dev.csv from the bible-kjv text, then stop")
    p.add_argument("--split-by", choices=("book", "verse"), default="book",
                   help="--prepare-kjv: dev verses from other books than train's (book), or from the same (verse)")
    p.add_argument("--data", nargs="+", help="pretraining text: files, folders or globs of .txt (train.py --data)")
    p.add_argument("--train", type=Path, help="labelled train file (.csv/.tsv/.jsonl, finetune.py --train)")
    p.add_argument("--dev", type=Path, help="labelled dev file, same columns")
    p.add_argument("--text-cols", default="text", help="finetune.py --text-cols")
    p.add_argument("--label-col", default="label", help="finetune.py --label-col")
    p.add_argument("--families", default="bert,electra", help="families pretrained with their own recipe")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME=FAMILY FLAGS'",
                   help="another recipe: a name, a family and train.py flags, e.g. "
                        "'bert-wwm=bert --whole-word-mask' (repeatable)")
    p.add_argument("--budgets", default="6e12,1.2e13,2.4e13",
                   help="pretraining budgets in FLOPs, comma-separated (a BERT-tiny step of 32 x 128 tokens: 1.5e10; "
                        "the default run's 1,500 steps: 2.3e13)")
    p.add_argument("--preset", default="tiny", help="model size of every run")
    p.add_argument("--seq-len", type=int, default=128, help="train.py --seq-len")
    p.add_argument("--batch-size", type=int, default=32, help="train.py --batch-size")
    p.add_argument("--vocab-size", type=int, default=8192, help="the shared tokenizer's vocabulary")
    p.add_argument("--finetune-args", default="--epochs 3 --batch-size 32 --max-len 64",
                   help="flags for every finetune.py run")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, comma-separated (the mean is reported)")
    p.add_argument("--pretrain-seed", type=int, default=0)
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the random-init baseline")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at a time")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each subprocess")
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--pretrain-dir", type=Path,
                   help="where the pretraining runs go (default: OUT/pretrain); experiments that differ only in "
                        "their fine-tuning can share them")
    args = p.parse_args(argv)
    if args.prepare_kjv:
        return args
    missing = [f"--{k}" for k in ("data", "train", "dev") if not getattr(args, k)]
    if missing:
        p.error(f"{', '.join(missing)} required (or --prepare-kjv to make them)")
    for name in ("train", "dev"):
        if not getattr(args, name).is_file():
            p.error(f"--{name} {getattr(args, name)}: no such file")
    try:
        args.budgets = sorted({float(b) for b in args.budgets.split(",")})
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as e:
        p.error(f"--budgets and --seeds are comma-separated numbers ({e})")
    if any(b <= 0 for b in args.budgets):
        p.error("--budgets must be positive FLOP counts, e.g. 4e15,8e15")
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    for name in ("jobs", "threads", "seq_len", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    args.data = [Path(d) for d in args.data]
    args.pretrain_dir = args.pretrain_dir or args.out / "pretrain"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.prepare_kjv:
        return prepare_kjv(*args.prepare_kjv, split_by=args.split_by)
    return run_experiment(args)


if __name__ == "__main__":
    plain_warnings("experiment.py")
    try:
        main()
    except (UsageError, data.DataError) as e:
        sys.exit(f"experiment.py: error: {e}")
    except RuntimeError as e:
        sys.exit(f"experiment.py: {e}")
