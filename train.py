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

Every checkpoint directory is written under a temporary name and renamed when complete, so a
kill at any moment leaves the last complete checkpoint intact; --resume continues from it.
"""
import argparse
import hashlib
import importlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import data
import tokenizer as tokenizers_lib

FAMILIES = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra"}

# Per-family defaults for the flags left unset: sized so that the default run finishes on a
# 2-core laptop CPU in a few minutes. On a GPU pass --preset base and a real --steps.
RECIPES = {
    "bert":    dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=1e-3, warmup=150),
    "roberta": dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=1e-3, warmup=150),
    "albert":  dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=1e-3, warmup=150),
    "electra": dict(preset="tiny", steps=1500, batch_size=32, seq_len=128, lr=5e-4, warmup=150),
}
# flags a --resume may change; every other flag must match the run being resumed
RESUME_MAY_CHANGE = {"steps", "eval_every", "save_every", "log_every", "eval_batches", "device",
                     "compile", "keep", "resume", "out", "show"}


class UsageError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


# ----------------------------------------------------------------------------- arguments

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"model family: {', '.join(FAMILIES)}")
    p.add_argument("--objective", help="pretraining objective (default: the family's own, e.g. mlm+nsp for bert)")
    p.add_argument("--preset", help="model size, e.g. tiny/mini/small/base/large (default: a CPU-sized one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set hidden_dropout_prob=0.0 (repeatable)")
    p.add_argument("--data", nargs="+", help="text files, folders or globs of .txt (default: Python's own docs)")
    p.add_argument("--tokenizer", help="a saved tokenizer or a Hugging Face checkpoint dir (default: train one)")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a tokenizer trained here")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, help="tokens per sequence, special tokens included")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="linear warm-up steps")
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear", help="decay after warm-up")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay (not on biases and norms)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="fp16 uses a GradScaler (default: bf16 on a GPU that has it, else fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    p.add_argument("--eval-batches", type=int, default=10, help="held-out batches per evaluation")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept in OUT/checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl records")
    p.add_argument("--out", help="run directory (default: runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--init-from", help="start from the weights of a Hugging Face checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--show", type=int, default=4, help="held-out examples shown at the end")
    args = p.parse_args(argv)
    args.given = {a for a in vars(args) if any(s.startswith("--" + a.replace("_", "-")) for s in (argv or sys.argv[1:]))}
    if args.model not in FAMILIES:
        p.error(f"unknown --model {args.model!r}; choose one of {', '.join(FAMILIES)}")
    for k, v in RECIPES[args.model].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.out = args.out or f"runs/{args.model}"
    for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "save_every", "log_every", "keep"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def parse_overrides(pairs):
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- setup

def pick_device(name):
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    kind = family.TOKENIZER_KIND
    corpus = hashlib.sha1(json.dumps(data.files_fingerprint(files)).encode()).hexdigest()[:12]
    cached = data.CACHE_DIR / "tokenizers" / f"{kind}-{args.vocab_size}-{corpus}"
    if (cached / "tokenizer.json").exists():
        return tokenizers_lib.load(cached)
    print(f"training a {kind} tokenizer ({args.vocab_size} tokens) on {len(files)} file(s) ...", flush=True)
    tok = tokenizers_lib.train([str(f) for f in files], kind=kind, vocab_size=args.vocab_size)
    tok.save(cached)
    return tok


def _has_tokenizer(path):
    return any((Path(path) / f).is_file() for f in tokenizers_lib.FILES)


# ----------------------------------------------------------------------------- optimizer and schedule

def make_optimizer(model, args, device):
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]  # biases, norms
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6, fused=device.type == "cuda")


def lr_factor(step, args):
    """Linear warm-up to the peak, then linear or cosine decay to 0 at --steps."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return 1.0 - progress if args.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir, step, model, tok, optimizer, scheduler, scaler, args):
    """OUT/checkpoints/step_N/ written as a temp dir then renamed; then the model is exported to OUT."""
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".tmp-step_{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save(tmp)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
             "args": {k: v for k, v in vars(args).items() if k != "given"}}
    torch.save(state, tmp / "training_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)                                   # the checkpoint exists only once complete
    for old in sorted(ckpts.glob("step_*"))[:-args.keep]:
        shutil.rmtree(old, ignore_errors=True)
    model.save_pretrained(run_dir)                           # the latest model, loadable with from_pretrained
    tok.save(run_dir)
    return final


def latest_checkpoint(run_dir):
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    return ckpts[-1] if ckpts else None


def check_resume_args(args, saved):
    """A resumed run keeps its own settings; only RESUME_MAY_CHANGE flags may be given anew."""
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


def _word_positions(tok, ids):
    """Positions of tokens that are whole words (not specials, not word pieces), for the display."""
    pos = []
    for i, t in enumerate(ids):
        if t in tok.special_ids:
            continue
        s = tok.id_to_token(t)
        nxt = tok.id_to_token(ids[i + 1]) if i + 1 < len(ids) else ""
        if tok.kind == "wordpiece":
            whole = not s.startswith("##") and not nxt.startswith("##") and s.isalpha() and len(s) > 2
        else:                                                    # bpe 'Ġ' / unigram '▁' mark a word start
            whole = s[:1] in "Ġ▁" and nxt[:1] in "Ġ▁" and s[1:].isalpha() and len(s) > 3
        if whole:
            pos.append(i)
    return pos


@torch.no_grad()
def show_fill_mask(mlm, tok, batches, device, n, k=5):
    """A few held-out sequences with one word masked, and the model's top-k fillers."""
    mlm.eval()
    b = batches.get_batch(10_000)
    ids = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])        # the original text
    rng = random.Random(0)
    print(f"\nfill-mask on held-out text ({tok.mask_token} = the hidden word, then the top {k} guesses):")
    for row in range(min(n, ids.shape[0])):
        real = ids[row][b["attention_mask"][row]].tolist()
        positions = _word_positions(tok, real)
        if not positions:
            continue
        p = rng.choice(positions)
        truth = real[p]
        masked = list(real)
        masked[p] = tok.mask_id
        x = torch.tensor([masked], device=device)
        probs = mlm(x, torch.ones_like(x, dtype=torch.bool)).logits[0, p].float().softmax(-1)
        top = probs.topk(k)
        lo, hi = max(0, p - 16), min(len(masked), p + 12)
        text = f"{tok.decode(real[lo:p])} {tok.mask_token} {tok.decode(real[p + 1:hi])}"
        guesses = ", ".join(f"{tok.decode([i]).strip()} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"  ...{text}...\n    truth: {tok.decode([truth]).strip()!r:14} model: {guesses}")
    mlm.train()


@torch.no_grad()
def show_replaced_tokens(electra, tok, batches, device, n, width=48):
    """ELECTRA: held-out text with the generator's replacements and the discriminator's verdicts."""
    electra.eval()
    b = {k: v[:n].to(device) for k, v in batches.get_batch(10_000).items()}
    r = electra.replaced_token_detection(b["input_ids"], b["attention_mask"], b.get("token_type_ids"),
                                         b["labels"], generator=torch.Generator(device).manual_seed(0))
    print("\nreplaced-token detection on held-out text: [original->generator's sample] marks a replaced token,"
          "\n* a token the discriminator calls replaced (p > 0.5), with its probability:")
    for row in range(r["original"].shape[0]):
        real = b["attention_mask"][row].nonzero().flatten().tolist()[:width]
        words, caught, replaced, false_alarms = [], 0, 0, 0
        for i in real:
            o, c = int(r["original"][row, i]), int(r["corrupted"][row, i])
            if o in tok.special_ids:
                continue
            p = float(r["p_replaced"][row, i])
            flagged = p > 0.5
            text = tok.id_to_token(o)
            if bool(r["is_replaced"][row, i]):
                replaced += 1
                caught += flagged
                text = f"[{text}->{tok.id_to_token(c)}]" + (f"*{p:.2f}" if flagged else f"({p:.2f})")
            elif flagged:
                false_alarms += 1
                text = f"{text}*{p:.2f}"
            words.append(text)
        line = " ".join(words).replace(" ##", "").replace("##", "")
        print(f"  {line}\n    replaced {replaced}, caught {caught}, false alarms {false_alarms}")
    electra.train()


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    family = importlib.import_module(args.model)
    run_dir = Path(args.out)

    # -- resume: the run's own settings come back, then the same code path as a fresh run
    resume_from, state = None, None
    if args.resume:
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise UsageError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
        state = torch.load(resume_from / "training_state.pt", map_location="cpu", weights_only=True)
        check_resume_args(args, state["args"])

    objective = args.objective or family.DEFAULT_OBJECTIVE
    if objective not in family.PRETRAINING_CLASSES:
        raise UsageError(f"--model {args.model} does not train with --objective {objective!r}; "
                         f"choose one of {', '.join(family.PRETRAINING_CLASSES)}")
    args.objective = objective
    device = pick_device(args.device)
    seed_everything(args.seed)
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    # -- data and tokenizer
    files = data.resolve_data(args.data, data.CACHE_DIR)
    tok = tokenizers_lib.load(resume_from) if resume_from else get_tokenizer(args, family, files)
    train_corpus, val_corpus = data.build_cache(files, tok, data.CACHE_DIR)
    masking = getattr(family, "MLM_MASKING", {})
    masker = data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids, **masking)
    packed = getattr(family, "PACKED_SEQUENCES", False) and objective in ("mlm", "rtd")
    kw = dict(tok=tok, objective=objective, seq_len=args.seq_len, batch_size=args.batch_size,
              masker=masker, packed=packed)
    train_batches = data.PretrainingBatches(train_corpus, seed=args.seed, **kw)
    val_batches = data.PretrainingBatches(val_corpus, seed=args.seed + 1, **kw)

    # -- model
    config_cls = getattr(family, FAMILIES[args.model] + "Config")
    model_cls = family.PRETRAINING_CLASSES[objective]
    try:
        if resume_from or args.init_from:
            model = model_cls.from_pretrained(resume_from or Path(args.init_from), strict=bool(resume_from))
        else:
            config = config_cls.from_preset(args.preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                            **parse_overrides(args.set))
            model = model_cls(config)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    vocab = model.config.vocab_size
    if tok.vocab_size > vocab:
        raise UsageError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary has {vocab}: "
                         "use the tokenizer that came with the checkpoint (--tokenizer CHECKPOINT_DIR)")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and args.seq_len > max_pos - getattr(family, "POSITION_OFFSET", 0):
        raise UsageError(f"--seq-len {args.seq_len} is longer than the model's {max_pos} positions")
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, args, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args))
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = state["step"]
    train_model = torch.compile(model) if args.compile else model

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if resume_from:
        rewrite_metrics(metrics_path, step)
        print(f"resuming {resume_from} at step {step}")
    elif metrics_path.exists():
        metrics_path.unlink()                                 # a fresh run in an old directory
    log = metrics_path.open("a")

    def record(rec):
        log.write(json.dumps(rec) + "\n")
        log.flush()

    tokens_per_step = args.batch_size * args.seq_len * args.grad_accum
    print(f"{args.model} {args.preset} ({n_params / 1e6:.1f}M parameters), objective {objective}, "
          f"{device} {args.precision}, kernels {__import__('kernels').BACKEND}\n"
          f"data: {len(files)} file(s), {train_corpus.n_docs} train / {val_corpus.n_docs} held-out documents, "
          f"{train_corpus.n_tokens / 1e6:.2f}M train tokens, vocabulary {tok.vocab_size}\n"
          f"{args.steps} steps x {tokens_per_step} tokens (batch {args.batch_size} x seq {args.seq_len}"
          f" x accum {args.grad_accum}), lr {args.lr}, out {run_dir}")

    # -- the loop
    from tqdm import tqdm
    first_eval = None
    if step == 0:
        first_eval = evaluate(model, val_batches, args.eval_batches, device, autocast)
        record({"step": 0, **first_eval})
    stream = train_batches.iterate(start_step=step * args.grad_accum)
    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="pretraining", unit="step", dynamic_ncols=True)
    t_log, data_time, compute_time, sums, n_sums = time.perf_counter(), 0.0, 0.0, {}, 0
    last_eval = first_eval
    while step < args.steps:
        t0 = time.perf_counter()
        for micro in range(args.grad_accum):
            td = time.perf_counter()
            batch = next(stream)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            data_time += time.perf_counter() - td
            with autocast:
                out = train_model(**batch)
            loss = out.loss / args.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            n_sums += 1
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip if args.clip > 0 else float("inf"))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        compute_time += time.perf_counter() - t0
        bar.update(1)

        if step % args.log_every == 0 or step == args.steps:
            elapsed = time.perf_counter() - t_log
            rec = {"step": step, **{k: round(float(v) / n_sums, 5) for k, v in sums.items()},
                   "lr": scheduler.get_last_lr()[0], "grad_norm": round(float(grad_norm), 4),
                   "tokens_per_s": round(tokens_per_step * n_sums / args.grad_accum / elapsed, 1),
                   "data_ms": round(1000 * data_time / n_sums, 2),
                   "step_ms": round(1000 * compute_time / (n_sums / args.grad_accum), 2)}
            record(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            t_log, data_time, compute_time, sums, n_sums = time.perf_counter(), 0.0, 0.0, {}, 0
        if step % args.eval_every == 0 or step == args.steps:
            last_eval = evaluate(model, val_batches, args.eval_batches, device, autocast)
            record({"step": step, **last_eval})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        if step % args.save_every == 0 or step == args.steps:
            save_checkpoint(run_dir, step, model, tok, optimizer, scheduler, scaler, args)
    bar.close()
    stream.close()
    log.close()

    # -- summary
    if first_eval and last_eval:
        print("held-out: " + ", ".join(f"{k[4:]} {first_eval[k]:.4f} -> {last_eval[k]:.4f}"
                                        for k in last_eval if k in first_eval))
    print(f"saved {run_dir} (model + tokenizer, Hugging Face layout) and {run_dir / 'metrics.jsonl'}")
    if args.show:
        show_fill_mask(getattr(model, "generator", model), tok, val_batches, device, args.show)
        if hasattr(model, "replaced_token_detection"):
            show_replaced_tokens(model, tok, val_batches, device, args.show)
    return model


if __name__ == "__main__":
    try:
        main()
    except (UsageError, data.DataError) as e:
        sys.exit(f"train.py: error: {e}")
