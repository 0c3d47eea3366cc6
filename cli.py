"""What the command-line tools share. train.py, finetune.py, predict.py, bench.py and experiment.py import
this file and never each other, so each can be read (and changed) alone.

  families       load_family(name): a model file's FAMILY declaration (modeling.Family), by --model name
  usage errors   UsageError: bad input from the user, printed as one line with no traceback;
                 parse_overrides for --set KEY=VALUE; plain_warnings (a warning as one line, too)
  setup          add_setup_args (--device, --precision, --threads, --seed), pick_device, seed_everything,
                 mixed_precision (autocast and GradScaler), set_threads (the CPU threads torch uses)
  progress       progress(): a tqdm bar in a terminal, plain lines now and then when the output is a file
  optimisation   make_optimizer (AdamW, no weight decay on biases and norms, optional layer-wise decay)
                 and lr_factor (linear warm-up, then linear or cosine decay)
  fill-mask      fill_mask_ids (predict.py's function for encoded batches) and the held-out displays
                 that train.py prints at the end of a run
"""
import argparse
import contextlib
import importlib
import json
import math
import os
import random
import re
import sys
import time
import warnings
from typing import NamedTuple, Optional

import numpy as np
import torch

import modeling

FAMILIES = ("bert", "roberta", "albert", "electra")   # --model names = module names = config.json model_types


class UsageError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


def load_family(name):
    """The FAMILY that model file `name`.py declares at its end."""
    if name not in FAMILIES:
        raise UsageError(f"unknown model family {name!r}; this repository has {', '.join(FAMILIES)}")
    family = importlib.import_module(name).FAMILY
    if not isinstance(family, modeling.Family) or family.name != name:
        raise TypeError(f"{name}.py must end with FAMILY = modeling.Family(name={name!r}, ...)")
    return family


def plain_warnings(prog):
    """Show each warning as one line on stderr, `PROG: warning: MESSAGE`, instead of Python's file:line and
    source line: for a tool's command line (its __main__ block), where the reader is not the programmer."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=file or sys.stderr)
    warnings.showwarning = show


def parse_overrides(pairs):
    """--set KEY=VALUE ...: {KEY: VALUE}, VALUE read as JSON where it is (numbers, true, null), else a string."""
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

def add_setup_args(parser, seed_help="seeds the weights a run initialises and its random choices"):
    """--device, --precision, --threads and --seed, as train.py, finetune.py and bench.py take them."""
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS),
                        help="autocast dtype; fp16 uses a GradScaler (default: bf16 on a GPU that has it, else fp32)")
    add_threads_arg(parser)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def pick_device(name):
    """torch.device(name), else the best available: cuda, then mps, then the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # --precision -> autocast dtype


class Precision(NamedTuple):
    name: str                                   # fp32, bf16 or fp16
    autocast: contextlib.AbstractContextManager  # enter it around every forward pass (reusable)
    scaler: Optional[torch.amp.GradScaler]      # fp16 only: scale the loss, unscale before clipping


def mixed_precision(name, device):
    """--precision on `device`: name None picks bf16 on a GPU that has it, else fp32."""
    device = torch.device(device)
    if name is None:
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    dtype = PRECISIONS[name]
    return Precision(name, torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext(),
                     torch.amp.GradScaler(device.type) if name == "fp16" else None)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with each flag's default where it has one (argparse's ArgumentDefaultsHelpFormatter also
    prints 'default: None' and 'default: False'), and the description and epilog as written."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS, []) and "default" not in help and action.option_strings:
            help += " (default: %(default)s)"
        return help


def add_threads_arg(parser):
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch's matmuls and kernels (default: $OMP_NUM_THREADS if set, else the "
                             "cores this process may use less the other jobs running now; at least 1)")


PROC_STAT = "/proc/stat"        # Linux: procs_running, the tasks running or ready to run at this moment


def other_jobs():
    """(how many cores the other jobs keep busy now, how it was measured). On Linux: /proc/stat's
    procs_running (every runnable thread on the machine, counted at this instant) less this one; where
    there is no /proc (macOS), the 1-minute load average, which trails a job that just ended by a minute."""
    try:
        with open(PROC_STAT) as f:
            running = next(int(line.split()[1]) for line in f if line.startswith("procs_running "))
        return max(0, running - 1), f"{max(0, running - 1)} other job(s) running"
    except (OSError, StopIteration, ValueError, IndexError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return load, f"load {load:.1f}"


def set_threads(n=None):
    """Set torch's intra-op threads: n, else $OMP_NUM_THREADS, else the cores free now. Returns (threads, why).

    torch's default is every core. When other jobs run, its threads wait on each other at every op's
    barrier and a step slows down by up to several times (a fine-tuning epoch on a 2-core CPU with one
    other job: 27 s on 2 threads, 9 s on 1), so the default counts the cores that are free: those this
    process may run on, less the jobs running beside it now (other_jobs). A run resumed with another
    thread count continues with other rounding (not bit for bit): pass --threads to pin it."""
    why = "--threads"
    if n is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    if n is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        busy, measured = other_jobs()
        n, why = max(1, min(cores, round(cores - busy))), f"{cores} cores, {measured}; --threads N to choose"
    if n < 1:
        raise UsageError(f"--threads {n}: give at least 1")
    torch.set_num_threads(n)
    return n, why


class _PlainProgress:
    """tqdm's interface (update, set_postfix, write, close) as plain lines, for a log file: one line per 5% of
    the steps or per minute, whichever comes first, and one at the end, where tqdm would rewrite one line
    with carriage returns (1,500 steps: 1,600 updates)."""

    def __init__(self, total, initial=0, desc="", every_s=60.0):
        self.total, self.n, self.desc, self.every_s, self.postfix = total, initial, desc, every_s, {}
        self.t0 = self.t_last = time.perf_counter()
        self.n0 = self.n_last = initial

    def update(self, k=1):
        self.n += k
        now = time.perf_counter()
        if self.n >= self.total or self.n - self.n_last >= max(1, self.total // 20) or now - self.t_last >= self.every_s:
            rate = (self.n - self.n0) / max(now - self.t0, 1e-9)
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 360000 else "?"
            print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), "
                  f"{rate:.2f} steps/s, {now - self.t0:.0f} s, {eta} left{extra}", flush=True)
            self.t_last, self.n_last = now, self.n

    def set_postfix(self, **kw):
        self.postfix = kw

    def write(self, s):
        print(s, flush=True)

    def close(self):
        pass


def progress(total, initial=0, desc="", disable=False):
    """A progress display: tqdm's bar when stderr is a terminal, else _PlainProgress's periodic lines."""
    if not disable and not sys.stderr.isatty():
        return _PlainProgress(total, initial, desc)
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, disable=disable)


# ----------------------------------------------------------------------------- optimisation

_LAYER = re.compile(r"\.encoder\.(?:layer|albert_layer_groups)\.(\d+)\.")
_EMBEDDINGS = re.compile(r"\.(?:embeddings|embeddings_project|embedding_hidden_mapping_in)\.")


def layer_depths(model):
    """{parameter name: depth}: 0 embeddings, 1..L encoder layers (ALBERT: shared groups), L + 1 the
    pooler, L + 2 the task head. Returns (depths, L)."""
    names = [n for n, _ in model.named_parameters()]
    L = len({m.group(1) for n in names if (m := _LAYER.search(n))})
    prefix = model.base_model_prefix + "."
    depths = {}
    for n in names:
        if m := _LAYER.search(n):
            depths[n] = int(m.group(1)) + 1
        elif _EMBEDDINGS.search(n):
            depths[n] = 0
        elif n.startswith(prefix + "pooler"):
            depths[n] = L + 1
        elif n.startswith(prefix):
            raise ValueError(f"layer decay: no depth for the encoder parameter {n}")
        else:
            depths[n] = L + 2                           # classifier: the task head
    return depths, L


def make_optimizer(model, lr, weight_decay, layer_decay=None, fused=False):
    """AdamW with BERT's settings; no weight decay on biases and LayerNorm weights (the 1-d tensors).
    With layer_decay (ELECTRA's fine-tuning), one group per (depth, decay) at lr * layer_decay^(L + 2 - depth).
    fused: one kernel over all the parameters (CUDA and the CPU have it; ~5% of a CPU step)."""
    depths, L = layer_depths(model) if layer_decay else ({}, 0)
    groups = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = weight_decay if p.ndim >= 2 else 0.0
        depth = depths.get(n, L + 2)
        g = groups.setdefault((depth, wd), {"params": [], "weight_decay": wd, "depth": depth,
                                            "lr": lr * (layer_decay or 1.0) ** (L + 2 - depth)})
        g["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)


def lr_factor(step, warmup, steps, schedule="linear"):
    """The learning rate at `step` over its peak: linear warm-up, then linear or cosine decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- fill-mask

class Filler(NamedTuple):
    token: str       # the token as the tokenizer writes it alone: ' paris' for byte-level BPE 'Ġparis'
    prob: float      # softmax over the vocabulary at the mask
    id: int


def token_text(tok, i):
    """One token as the tokenizer writes it: the decoder turns 'Ġparis' into ' paris' and '▁paris'
    into 'paris', and keeps '##s' (a word piece alone); special tokens are shown, not skipped."""
    return tok.decode([i], skip_special_tokens=False)


@contextlib.contextmanager
def evaluating(model):
    """no_grad and eval mode for the block, then the model's own mode back (train.py calls us mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def fill_mask_ids(model, tok, input_ids, attention_mask=None, token_type_ids=None, top_k=5):
    """fill_mask for a batch already encoded: (B, T) tensors, True/1 = a real token in attention_mask.
    A list per row, of a list per position holding tok.mask_id, of `Filler`s, most probable first."""
    device = next(model.parameters()).device
    to_device = lambda x: None if x is None else x.to(device)
    is_mask = input_ids == tok.mask_id                                                 # (B, T)
    with evaluating(model):
        logits = model(to_device(input_ids), to_device(attention_mask), to_device(token_type_ids)).logits  # (B, T, V)
    # a vocabulary padded beyond the tokenizer's (to a multiple of 64, say) has ids that no text can hold
    probs = logits[is_mask.to(device)][:, :tok.vocab_size].float().softmax(-1)          # (M, V), the masks in order
    top = probs.topk(min(top_k, probs.shape[-1]))
    fillers = [[Filler(token_text(tok, i), p, i) for p, i in zip(ps, ids)]
               for ps, ids in zip(top.values.tolist(), top.indices.tolist())]            # M lists of top_k
    results = []
    for n in is_mask.sum(1).tolist():                                                  # back into one list per row
        results.append(fillers[:n])
        fillers = fillers[n:]
    return results


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


def show_fill_mask(mlm, tok, batches, device, n, k=5):
    """A few held-out sequences with one word masked, and the model's top-k fillers."""
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
        fillers = fill_mask_ids(mlm, tok, torch.tensor([masked], device=device), top_k=k)[0][0]
        lo, hi = max(0, p - 16), min(len(masked), p + 12)
        text = f"{tok.decode(real[lo:p])} {tok.mask_token} {tok.decode(real[p + 1:hi])}"
        guesses = ", ".join(f"{f.token.strip()} {f.prob:.2f}" for f in fillers)
        print(f"  ...{text}...\n    truth: {tok.decode([truth]).strip()!r:14} model: {guesses}")


@torch.no_grad()
def show_replaced_tokens(electra, tok, batches, device, n, width=48):
    """ELECTRA: held-out text with the generator's replacements and the discriminator's verdicts."""
    electra.eval()
    b = {k: v[:n].to(device) for k, v in batches.get_batch(10_000).items()}
    r = electra.replaced_token_detection(b["input_ids"], b["attention_mask"], b.get("token_type_ids"),
                                         b["labels"], rng=torch.Generator(device).manual_seed(0))
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
