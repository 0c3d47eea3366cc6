"""Pretrain a BERT-family model from scratch (or continue from a checkpoint).

    python train.py --model electra                       # offline, on CPU in minutes: the default corpus
    python train.py --model bert --objective mlm+nsp --preset base --data corpus/ --steps 100000 \
        --batch-size 256 --seq-len 128 --precision bf16   # a real run on a GPU

With no --data the corpus is text that ships with Python (the standard library's docstrings
and pydoc topics), so the default run needs no download. A tokenizer of the family's kind is
trained on the corpus (or --tokenizer loads one), the corpus is tokenized once into a cache,
and the model named by --model is pretrained with its objective. Everything lands in --out:

    runs/bert/config.json, model.safetensors, tokenizer.json   the latest model, Hugging Face layout
    runs/bert/metrics.jsonl                                    one JSON record per log step / evaluation
    runs/bert/checkpoints/step_0001000/                        model + tokenizer + training_state.pt

Every checkpoint directory is written under a temporary name, its manifest.json (each file's size and
SHA-256) last, and renamed when complete, so a kill at any moment leaves the last complete checkpoint
intact; --resume continues from the newest one that matches its manifest (--resume auto: or starts
fresh when there is none yet, so one command serves every launch of `torchrun --max-restarts`), also
on another number of processes, with the accumulation adjusted to keep the global batch.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import data
import modeling
import tokenizer as tokenizers_lib
from cli import (FAMILIES, HelpFormatter, UsageError, add_setup_args, load_family, lr_factor, make_optimizer,
                 mixed_precision, parse_overrides, pick_device, plain_warnings, progress, seed_everything,
                 set_threads, show_fill_mask, show_replaced_tokens)

# Per-family defaults for the flags left unset: sized so that the default run finishes on a
# 2-core laptop CPU in a few minutes. On a GPU pass --preset base and a real --steps.
RECIPES = {
    "bert":    dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=1e-3, warmup=150),
    "roberta": dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=1e-3, warmup=150),
    "albert":  dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=1e-3, warmup=150),
    "electra": dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=5e-4, warmup=150),
}
# flags a --resume may change; every other flag must match the run being resumed
RESUME_MAY_CHANGE = {"steps", "eval_every", "save_every", "log_every", "eval_batches", "device", "threads",
                     "compile", "keep", "resume", "out", "show", "max_bad_steps"}


class TrainingStopped(Exception):
    """The run stopped before --steps: a signal (checkpoint saved) or too many non-finite steps.
    `exit_code` is what the command line exits with (128 + signal number for a signal)."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- arguments

def parse_args(argv=None):
    recipes = "\n".join(f"  {m:8} " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r.items()) for m, r in RECIPES.items())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False, formatter_class=HelpFormatter,
                                epilog=f"The flags left unset take the family's CPU-sized recipe:\n{recipes}")
    p.add_argument("--model", required=True, help=f"model family: {', '.join(FAMILIES)}")
    p.add_argument("--objective", help="pretraining objective (default: the family's own, e.g. mlm+nsp for bert)")
    p.add_argument("--preset", help="model size, e.g. tiny/mini/small/base/large (default: a CPU-sized one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set hidden_dropout_prob=0.0 (repeatable)")
    p.add_argument("--data", nargs="+", help="text files, folders or globs of .txt (default: Python's own docs)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the --data files, e.g. latin-1, cp1252")
    p.add_argument("--encoding-errors", choices=data.ENCODING_ERRORS, default="strict",
                   help="bytes that do not decode: stop with an error (strict), read as U+FFFD (replace), or drop them")
    p.add_argument("--tokenizer", help="a saved tokenizer or a Hugging Face checkpoint dir (default: train one)")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a tokenizer trained here")
    p.add_argument("--pad-vocab", type=int, default=64, metavar="MULTIPLE",
                   help="round a new model's vocabulary up to a multiple of this, for the GPU's matrix units "
                        "(30522 -> 30528); the extra ids are never targets, samples or predictions (1 = off)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, help="tokens per sequence, special tokens included")
    p.add_argument("--pack", action="store_true",
                   help="mlm/rtd: fill every row with several documents, no padding; a document attends only to "
                        "itself and its positions restart (block-diagonal attention)")
    p.add_argument("--mask-rate", type=float,
                   help="share of the ordinary tokens chosen as MLM targets (default: the family's, 0.15; "
                        "MosaicBERT and ModernBERT use 0.3)")
    p.add_argument("--whole-word-mask", action="store_true",
                   help="choose whole words as MLM targets, every token of a chosen word (words from the "
                        "tokenizer's ## / Ġ / ▁ markers)")
    p.add_argument("--ngram", type=int, default=1, metavar="N",
                   help="choose spans of 1..N consecutive words (with --whole-word-mask) or tokens, p(n) ~ 1/n, "
                        "never across special tokens (ALBERT: 3; 1 = single ones)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="linear warm-up steps")
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear", help="decay after warm-up")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay (not on biases and norms)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    p.add_argument("--eval-batches", type=int, default=10, help="held-out batches per evaluation")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept in OUT/checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl records")
    p.add_argument("--out", help="run directory (default: runs/MODEL)")
    p.add_argument("--resume", nargs="?", const="last", choices=("last", "auto"), default=None,
                   help="continue from the newest good checkpoint in --out (an error if there is none); "
                        "--resume auto: the same, or start fresh when --out has no checkpoint yet: one command "
                        "for the first launch and every restart (torchrun --max-restarts)")
    p.add_argument("--init-from", help="start from the weights of a Hugging Face checkpoint directory")
    add_setup_args(p, seed_help="seeds the initial weights, the data order, the masks and dropout")
    p.add_argument("--show", type=int, default=4, help="held-out examples shown at the end")
    p.add_argument("--max-bad-steps", type=int, default=10,
                   help="consecutive steps with a non-finite loss or gradient (each one skipped) before the run stops")
    args = p.parse_args(argv)
    args.given = {a for a in vars(args) if any(s.startswith("--" + a.replace("_", "-")) for s in (argv or sys.argv[1:]))}
    if args.model not in FAMILIES:
        p.error(f"unknown --model {args.model!r}; choose one of {', '.join(FAMILIES)}")
    for k, v in RECIPES[args.model].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.out = args.out or f"runs/{args.model}"
    for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "save_every", "log_every", "keep",
                 "max_bad_steps", "pad_vocab"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.mask_rate is not None and not 0 < args.mask_rate < 1:
        raise UsageError(f"--mask-rate {args.mask_rate}: the share of tokens masked must lie strictly between 0 and 1, "
                         "e.g. 0.15 (BERT) or 0.3 (MosaicBERT)")
    args.mask_rate = mask_rate(args.mask_rate, args.model)        # the run saves the rate it masks at
    if args.ngram < 1:
        raise UsageError(f"--ngram {args.ngram}: the longest masked span must be at least 1 (1 = single words or "
                         "tokens; ALBERT uses 3)")
    return args


# ----------------------------------------------------------------------------- setup

def mask_rate(rate, model):
    """--mask-rate, else (None: the flag not given, or a run saved before the default was resolved) the family's."""
    return load_family(model).masking["mlm_probability"] if rate is None else rate


def setup_distributed(args):
    """(rank, world_size, device) under torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK), else (0, 1, device).
    GPUs talk over NCCL, one GPU per process; CPU processes over gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(args.device)
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"torchrun on {device.type} is not supported: use CUDA GPUs or --device cpu")
    if not dist.is_initialized():
        # The keys of each torchrun attempt under their own prefix: a restarted group shares the launcher's
        # store with the processes it replaces, and must not read the addresses they left there.
        store, _, _ = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                store=dist.PrefixStore(f"train.py/attempt_{attempt}", store))
    return rank, world, device


def all_reduce_(tensor, world, op="max"):
    """In place across the processes of a torchrun job (a no-op in a single process)."""
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


class StopSignals:
    """SIGTERM (what a cluster sends before preempting) and SIGINT (Ctrl-C) ask the loop to stop after the
    current step and save a checkpoint; a second signal stops at once (the last checkpoint stays intact)."""

    def __init__(self, say):
        self.received, self._old, self._say = None, {}, say

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:                               # the second one: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signum
        self._say(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the end of the step and "
                  "stopping (send it again to stop at once)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def rng_state():
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s):
    random.setstate(s["python"])
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def get_tokenizer(args, family, files):
    """--tokenizer, else --init-from's, else one trained on the corpus (cached by corpus and kind)."""
    source = args.tokenizer or (args.init_from if args.init_from and _has_tokenizer(args.init_from) else None)
    if source:
        try:
            return tokenizers_lib.load(source)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"cannot load the tokenizer {source}: {e}") from None
    return data.corpus_tokenizer(files, family.tokenizer_kind, args.vocab_size, args.encoding, args.encoding_errors)


def _has_tokenizer(path):
    return any((Path(path) / f).is_file() for f in tokenizers_lib.FILES)


def check_objective(args, family):
    """--objective, or the family's own; one the family does not train with is a UsageError."""
    objective = args.objective or family.default_objective
    if objective not in family.pretraining:
        raise UsageError(f"--model {args.model} does not train with --objective {objective!r}; "
                         f"choose one of {', '.join(family.pretraining)}")
    if args.pack and objective not in data.PACKABLE:
        raise UsageError(f"--pack is for the objectives without sentence pairs ({', '.join(data.PACKABLE)}); "
                         f"{objective} needs two segments per row: drop --pack or choose another --objective")
    return objective


def load_corpus(args, family, tokenizer_from=None):
    """(files, tokenizer, train corpus, held-out corpus): --data (or the default corpus), the tokenizer
    (from `tokenizer_from`, e.g. the checkpoint being resumed, else get_tokenizer) and the token cache."""
    enc = dict(encoding=args.encoding, errors=args.encoding_errors)
    files = data.resolve_data(args.data, data.CACHE_DIR, **enc)
    tok = tokenizers_lib.load(tokenizer_from) if tokenizer_from else get_tokenizer(args, family, files)
    train_corpus, val_corpus = data.build_cache(files, tok, data.CACHE_DIR, **enc)
    return files, tok, train_corpus, val_corpus


def pretraining_batches(corpus, tok, family, objective, args, seed, rank=0, world_size=1):
    """The batches of `objective` over `corpus`, with the family's masking and packing: RoBERTa's rows
    are packed (attending across documents, as published); --pack packs any family's, documents apart."""
    masking = {**family.masking, "mlm_probability": mask_rate(args.mask_rate, args.model)}
    try:
        words = data.word_start_table(tok) if args.whole_word_mask else None
    except ValueError as e:
        raise UsageError(f"--whole-word-mask: {e}") from None
    return data.pretraining_batches(corpus, tok, objective, args.seq_len, args.batch_size, seed, masking, words,
                                    args.ngram, packed=args.pack or family.packed, separate_documents=args.pack,
                                    rank=rank, world_size=world_size)


# ----------------------------------------------------------------------------- checkpoints

MANIFEST = "manifest.json"      # every file of a checkpoint with its size and SHA-256, written last
NO_MANIFEST = f"no {MANIFEST}"  # what check_manifest says of a checkpoint without one


def save_checkpoint(run_dir, step, model, tok, optimizer, scheduler, scaler, args, rng=None):
    """OUT/checkpoints/step_N/ written as a temp dir (its manifest last, every file synced) then renamed;
    then the model is exported to OUT. `rng`: the RNG states of every process (a list, rank order);
    default: this process's. --keep prunes the oldest, never the one just written."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:                                        # never write a broken model over a good checkpoint
        raise TrainingStopped(f"step {step}: not saving, weights are not finite ({', '.join(bad[:3])}, ...); "
                              f"the last good checkpoint is {latest_checkpoint(run_dir)}")
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".tmp-step_{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save(tmp)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng or [rng_state()],
             "args": {k: v for k, v in vars(args).items() if k != "given"}, "manifest": True}
    torch.save(state, tmp / "training_state.pt")
    write_manifest(tmp)
    if final.exists():            # a bad checkpoint of this step that a resume skipped: set aside, not deleted
        aside = ckpts / f"replaced-{final.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.replace(final, aside)
        print(f"{final} was there already (skipped as not good when resuming); moved it to {aside}")
    os.replace(tmp, final)                                   # the checkpoint exists only once complete
    _fsync(ckpts)
    for old in sorted(ckpts.glob("step_*"))[:-args.keep]:
        if old != final:                  # the one just written is the last good one, whatever sorts after it
            shutil.rmtree(old, ignore_errors=True)
    model.save_pretrained(run_dir)                           # the latest model, loadable with from_pretrained
    tok.save(run_dir)
    return final


def _fsync(path):
    """Flush a file, or a folder's entries, to the disk (a folder where the OS allows it: not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder):
    """folder/manifest.json: {"files": {relative path: {"bytes", "sha256"}}}, after syncing every file to
    disk; written under a temporary name and renamed, so a manifest is either whole or absent."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in files:
        _fsync(p)
    manifest = {"files": {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                          for p in files}}
    tmp = Path(folder) / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(folder) / MANIFEST)
    _fsync(folder)


def check_manifest(folder):
    """None if every file that folder/manifest.json lists has its size and SHA-256, else what is wrong
    ("no manifest.json" when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return NO_MANIFEST
    try:
        files = json.loads(path.read_text())["files"]
        files = {str(name): (int(want["bytes"]), str(want["sha256"])) for name, want in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__})"
    for name, (size, _) in files.items():
        p = Path(folder) / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {size}"
    for name, (_, sha256) in files.items():                 # sizes first: they are cheap
        if _sha256(Path(folder) / name) != sha256:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def latest_checkpoint(run_dir):
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    return ckpts[-1] if ckpts else None


TRAINING_STATE = ("a training state holds only tensors and numbers",
                  "Resume from an earlier checkpoint (move this one out of checkpoints/) or start again")


def _read_state(ckpt):
    """(training state, None) or (None, why it cannot be read); a state made to run code is a UsageError."""
    try:
        return modeling.read_pickle(ckpt / "training_state.pt", *TRAINING_STATE), None
    except modeling.UnsafeCheckpointError as e:             # not a bad disk: a file crafted to run code
        raise UsageError(str(e)) from None
    except modeling.CheckpointError as e:
        return None, str(e)


def newest_good_checkpoint(run_dir, say):
    """(checkpoint dir, its training state) of the newest checkpoint that verifies; (None, None) when there is
    no checkpoint at all. A checkpoint whose manifest is missing or does not match, or whose training state
    cannot be read, is skipped with one line saying why (and left where it is); one written before
    checkpoints carried manifests is used unverified. A training state that would run code stops the resume."""
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*"), reverse=True)
    skipped = []
    for ckpt in ckpts:
        problem = check_manifest(ckpt)
        state, unreadable = _read_state(ckpt) if (ckpt / "training_state.pt").is_file() else (None, None)
        if problem == NO_MANIFEST and state is not None and not state.get("manifest"):
            say(f"{ckpt.name}: no {MANIFEST} (saved before checkpoints carried one): resuming it unverified")
            problem = None
        elif problem == NO_MANIFEST and state is not None:
            problem = f"its {MANIFEST} is missing (it was written with one)"
        problem = problem or unreadable
        if problem is None:
            return ckpt, state
        say(f"--resume: skipping {ckpt}: {problem}")
        skipped.append(f"{ckpt.name} ({problem})")
    if skipped:
        raise UsageError(f"--resume: no good checkpoint in {Path(run_dir) / 'checkpoints'}: {'; '.join(skipped)}. "
                         "Nothing was removed; restore a good copy there, or start again in another --out")
    return None, None


def fit_world(args, saved, world):
    """On resume on `world` processes: the --batch-size and --grad-accum that keep the run's global batch
    (batch x accumulation x processes): the accumulation adjusted to the new world size, or the values
    given now where they keep them. Returns (batch size, accumulation, what changed: '' if nothing)."""
    was, b0, a0 = saved.get("world_size", 1), saved["batch_size"], saved["grad_accum"]
    total = b0 * a0 * was
    b = args.batch_size if "batch_size" in args.given else b0
    a = args.grad_accum if "grad_accum" in args.given else (total // (b * world) if total % (b * world) == 0 else 0)
    args.given -= {"batch_size", "grad_accum"}               # settled here: not clashes for check_resume_args
    if b * a * world != total:
        keep = [f"--grad-accum {total // (b0 * world)}"] if total % (b0 * world) == 0 else []
        keep += [f"--batch-size {x} --grad-accum {total // (x * world)}" for x in range(b0 - 1, 0, -1)
                 if total % (x * world) == 0][:2]
        procs = ", ".join(str(w) for w in range(1, total + 1) if total % (w * b0) == 0)
        tried = f"{b} x {a} x {world}" if a else f"batch {b} on {world} process(es)"
        raise UsageError(f"--resume: the run's global batch is {b0} x {a0} x {was} process(es) = {total} sequences a "
                         f"step; {tried} cannot keep it (the learning rate and schedule were set for it). On {world} "
                         "process(es), keep it with " + (" or ".join(keep) if keep else
                                                         f"no batch size; with --batch-size {b0}, use {procs} processes"))
    if (b, a, world) == (b0, a0, was):
        return b, a, ""
    what = ("the same examples and masks in every step" if b == b0 else "the same examples in every step, their masks "
            f"and sentence pairs drawn anew (they are seeded per batch of {b})")
    change = (f"{was} -> {world} process(es): " if world != was else "") + f"--grad-accum {a0} -> {a}"
    change += (f", --batch-size {b0} -> {b}" if b != b0 else "") + f" keep {total} sequences a step, {what}"
    return b, a, change


def check_resume_args(args, saved):
    """A resumed run keeps its own settings; only RESUME_MAY_CHANGE flags may be given anew. A run saved with
    mask_rate None (before the default was resolved) masked at the family's rate, and compares as that."""
    if "mask_rate" in saved:
        saved = {**saved, "mask_rate": mask_rate(saved["mask_rate"], saved.get("model", args.model))}
    clashes = [f"--{k.replace('_', '-')} {getattr(args, k)!r} (the run used {saved[k]!r})"
               for k in sorted(args.given - RESUME_MAY_CHANGE)
               if k in saved and getattr(args, k) != saved[k]]
    if clashes:
        raise UsageError("--resume continues a run with its own settings; these differ: " + "; ".join(clashes))
    for k, v in saved.items():
        if not (k in RESUME_MAY_CHANGE and k in args.given):
            setattr(args, k, v)


def rewrite_metrics(path, upto_step):
    """On resume, drop records logged after the checkpoint: they will be logged again."""
    if not path.exists():
        return
    keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= upto_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in keep))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- evaluation and display

@torch.no_grad()
def evaluate(model, batches, n, device, autocast):
    model.eval()
    sums, count = {}, 0
    for i in range(n):
        batch = {k: v.to(device, non_blocking=True) for k, v in batches.get_batch(i).items()}
        with autocast:
            out = model(**batch)
        for k, v in {"loss": out.loss, **out.metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
    model.train()
    return {f"val_{k}": v / count for k, v in sums.items()}


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    family = load_family(args.model)
    run_dir = Path(args.out)
    rank, world, device = setup_distributed(args)
    threads, why = set_threads(args.threads)                 # before any work: torch keeps the first setting
    say = print if rank == 0 else (lambda *a, **k: None)     # only rank 0 prints, logs and writes
    args.world_size = world

    # -- resume: the run's own settings come back, then the same code path as a fresh run
    resume_from, state, resized = None, None, ""
    if args.resume:
        choice = None
        if rank == 0:                  # rank 0 verifies and chooses; every process resumes that checkpoint
            try:
                resume_from, state = newest_good_checkpoint(run_dir, say)
                choice = resume_from
            except UsageError as e:
                choice = e
        if world > 1:
            box = [choice]
            torch.distributed.broadcast_object_list(box, src=0)
            choice = box[0]
        if isinstance(choice, Exception):
            raise choice
        resume_from = choice
        if resume_from is not None and state is None:        # the other processes read what rank 0 verified
            state, problem = _read_state(resume_from)
            if problem:
                raise UsageError(problem)
        if resume_from is None and args.resume != "auto":
            raise UsageError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume, or "
                             "with --resume auto (start fresh when there is none yet, continue when there is)")
        if resume_from is not None:
            batch_size, grad_accum, resized = fit_world(args, state["args"], world)
            check_resume_args(args, state["args"])
            args.batch_size, args.grad_accum, args.world_size = batch_size, grad_accum, world

    objective = args.objective = check_objective(args, family)
    seed_everything(args.seed + rank)                        # ranks draw different dropout masks
    args.precision, autocast, scaler = mixed_precision(args.precision, device)

    # -- data and tokenizer (with torchrun, rank 0 builds the caches first, the others then read them)
    if rank != 0:
        torch.distributed.barrier()                           # wait for rank 0's caches
    files, tok, train_corpus, val_corpus = load_corpus(args, family, tokenizer_from=resume_from)
    if rank == 0 and world > 1:
        torch.distributed.barrier()
    # each rank reads its own share of every step: rank r's batch at micro-step m is one process's m*W + r
    train_batches = pretraining_batches(train_corpus, tok, family, objective, args, args.seed, rank, world)
    val_batches = pretraining_batches(val_corpus, tok, family, objective, args, args.seed + 1)

    # -- model
    config_cls, model_cls = family.config, family.pretraining[objective]
    try:
        if resume_from or args.init_from:
            model = model_cls.from_pretrained(resume_from or Path(args.init_from), strict=bool(resume_from))
        else:
            vocab = -(-tok.vocab_size // args.pad_vocab) * args.pad_vocab
            # a config that samples from its vocabulary (ELECTRA's) learns where the tokenizer's ends
            padding = ({"tokenizer_vocab_size": tok.vocab_size}
                       if vocab > tok.vocab_size and family.tokenizer_vocab_field else {})
            config = config_cls.from_preset(args.preset, vocab_size=vocab, pad_token_id=tok.pad_id,
                                            **padding, **parse_overrides(args.set))
            model = model_cls(config)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    vocab = model.config.vocab_size
    if tok.vocab_size > vocab:
        raise UsageError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary has {vocab}: "
                         "use the tokenizer that came with the checkpoint (--tokenizer CHECKPOINT_DIR)")
    max_pos = model.config.max_position_embeddings
    if args.seq_len > max_pos - family.position_offset:
        raise UsageError(f"--seq-len {args.seq_len} is longer than the model's {max_pos} positions")
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    # the fused AdamW kernel (one pass over all the parameters) exists for CUDA and the CPU
    optimizer = make_optimizer(model, args.lr, args.weight_decay, fused=device.type in ("cuda", "cpu"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args.warmup, args.steps, args.schedule))
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if rank < len(rngs):              # a process added by a resize keeps its fresh seed (seed + rank)
            set_rng_state(rngs[rank])
        step = state["step"]
    ddp = None
    if world > 1:          # DDP averages the gradients across processes during the last micro-step's backward
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = ddp or model
    if args.compile:            # the MLM head gathers the masked positions: a size known only at run time
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        train_model = torch.compile(train_model)

    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for tmp in (run_dir / "checkpoints").glob(".tmp-*"):  # a checkpoint write that was killed half-way
            shutil.rmtree(tmp, ignore_errors=True)
        if resume_from:
            rewrite_metrics(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()                             # a fresh run in an old directory
    if resume_from:
        say(f"resuming {resume_from} at step {step}" + (f" ({resized})" if resized else ""))
    elif args.resume:
        say(f"--resume auto: no checkpoint in {run_dir / 'checkpoints'} yet, starting fresh")
    log = metrics_path.open("a") if rank == 0 else None

    def record(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    tokens_per_step = args.batch_size * args.seq_len * args.grad_accum * world
    say(f"{args.model} {args.preset} ({n_params / 1e6:.1f}M parameters), objective {objective}, "
        f"{device} {args.precision}, kernels {__import__('bert_kernels').BACKEND}"
        + (f", {threads} thread{'s' * (threads > 1)} ({why})" if device.type == "cpu" else "")
        + (f", {world} processes (DDP)" if world > 1 else "") + "\n"
        f"data: {len(files)} file(s), {train_corpus.n_docs} train / {val_corpus.n_docs} held-out documents, "
        f"{train_corpus.n_tokens / 1e6:.2f}M train tokens, vocabulary {tok.vocab_size}"
        + (f" (the model's padded to {vocab})" if vocab > tok.vocab_size else "") + "\n"
        f"{args.steps} steps x {tokens_per_step} tokens (batch {args.batch_size} x seq {args.seq_len}"
        f" x accum {args.grad_accum}" + (f" x {world} processes" if world > 1 else "") +
        f"), lr {args.lr}, out {run_dir}")

    def checkpoint(step):
        rng = [rng_state()]
        if world > 1:                                         # every process's RNG, for an exact resume
            rng = [None] * world
            torch.distributed.all_gather_object(rng, rng_state())
        if rank == 0:
            return save_checkpoint(run_dir, step, model, tok, optimizer, scheduler, scaler, args, rng)

    # -- the loop
    first_eval = None
    if step == 0 and rank == 0:
        first_eval = evaluate(model, val_batches, args.eval_batches, device, autocast)
        record({"step": 0, **first_eval})
    stream = train_batches.iterate(start_step=step * args.grad_accum)
    model.train()
    bar = progress(args.steps, step, "pretraining", disable=rank != 0)
    write = bar.write if rank == 0 else (lambda *a, **k: None)
    t_log, data_time, compute_time, sums, n_sums, window = time.perf_counter(), 0.0, 0.0, {}, 0, 0
    last_eval, bad_in_a_row, skipped, finished = first_eval, 0, 0, False
    signals = StopSignals(write)
    try:
        with signals:
            while step < args.steps:
                t0 = time.perf_counter()
                step_sums = {}
                for micro in range(args.grad_accum):
                    td = time.perf_counter()
                    batch = next(stream)
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    data_time += time.perf_counter() - td
                    last = micro == args.grad_accum - 1
                    with (ddp.no_sync() if ddp and not last else nullcontext()), autocast:
                        out = train_model(**batch)
                        loss = out.loss / args.grad_accum
                    (scaler.scale(loss) if scaler else loss).backward()
                    for k, v in {"loss": out.loss, **out.metrics}.items():
                        step_sums[k] = step_sums.get(k, 0.0) + v.detach().float()
                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip if args.clip > 0 else float("inf"))
                # a non-finite loss or gradient skips the update (with fp16 an overflow is the scaler's business:
                # it skips the step itself and lowers the scale); every process takes the same decision
                bad = not torch.isfinite(step_sums["loss"]) or (scaler is None and not torch.isfinite(grad_norm))
                flags = torch.tensor([bad, signals.received is not None], dtype=torch.float32, device=device)
                bad, stop = (bool(f) for f in all_reduce_(flags, world))
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                elif not bad:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                window += 1
                compute_time += time.perf_counter() - t0
                bar.update(1)
                if bad:
                    skipped += 1
                    bad_in_a_row += 1
                    write(f"step {step}: non-finite loss or gradient, update skipped ({bad_in_a_row} in a row)")
                    if bad_in_a_row >= args.max_bad_steps:
                        raise TrainingStopped(
                            f"step {step}: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                            f"({skipped} skipped in all); the last good checkpoint is "
                            f"{latest_checkpoint(run_dir) or 'none (no checkpoint was saved yet)'}: "
                            "resume it with --resume, or start again with a lower --lr or --precision fp32")
                else:
                    bad_in_a_row = 0
                    for k, v in step_sums.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n_sums += args.grad_accum

                if step % args.log_every == 0 or step == args.steps:
                    names = sorted(sums)
                    totals = all_reduce_(torch.stack([torch.as_tensor(sums[k], device=device).float() for k in names]
                                                     + [torch.tensor(float(n_sums), device=device)]), world, "sum")
                    n_all = max(1.0, float(totals[-1]))
                    elapsed = time.perf_counter() - t_log
                    rec = {"step": step, **{k: round(float(v) / n_all, 5) for k, v in zip(names, totals)},
                           "lr": scheduler.get_last_lr()[0], "grad_norm": round(float(grad_norm), 4),
                           "tokens_per_s": round(tokens_per_step * window / elapsed, 1),
                           "data_ms": round(1000 * data_time / (window * args.grad_accum), 2),
                           "step_ms": round(1000 * compute_time / window, 2)}
                    if skipped:
                        rec["skipped_steps"] = skipped
                    record(rec)
                    if "loss" in rec:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                    t_log, data_time, compute_time, sums, n_sums, window = time.perf_counter(), 0.0, 0.0, {}, 0, 0
                if rank == 0 and (step % args.eval_every == 0 or step == args.steps):
                    last_eval = evaluate(model, val_batches, args.eval_batches, device, autocast)
                    record({"step": step, **last_eval})
                    write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                if step % args.save_every == 0 or step == args.steps or stop:
                    saved = checkpoint(step)
                if stop and step < args.steps:
                    name = signal.Signals(signals.received).name if signals.received else "a signal"
                    raise TrainingStopped(f"stopped by {name} at step {step}: saved {saved}; continue with the same "
                                          "command and --resume", exit_code=128 + (signals.received or 15))
        finished = True
    except TrainingStopped:
        finished = True                                       # every process stops at the same step
        raise
    finally:
        bar.close()
        stream.close()
        if log:
            log.close()
        if world > 1:
            if finished:
                torch.distributed.barrier()                   # rank 0 may still be writing
            torch.distributed.destroy_process_group()

    # -- summary
    if first_eval and last_eval:
        say("held-out: " + ", ".join(f"{k[4:]} {first_eval[k]:.4f} -> {last_eval[k]:.4f}"
                                     for k in last_eval if k in first_eval))
    say(f"saved {run_dir} (model + tokenizer, Hugging Face layout) and {run_dir / 'metrics.jsonl'}")
    if args.show and rank == 0:
        rtd = objective == "rtd"                    # the Family contract: a generator and a discriminator
        show_fill_mask(model.generator if rtd else model, tok, val_batches, device, args.show)
        if rtd:
            show_replaced_tokens(model, tok, val_batches, device, args.show)
        print(f"\nyour own text: python predict.py {run_dir} \"The {tok.mask_token} of the function.\"")
    return model


if __name__ == "__main__":
    plain_warnings("train.py")
    try:
        main()
    except (UsageError, data.DataError) as e:
        sys.exit(f"train.py: error: {e}")
    except TrainingStopped as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
