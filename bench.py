"""Training speed, side by side with Hugging Face transformers: complete steps, same device, same batches.

    python bench.py --model bert --preset base --seq-len 128 --batch-size 64            # on a GPU (bf16)
    python bench.py --model bert --preset mini --batch-size 16 --steps 20               # on a CPU (fp32)
    python bench.py --model electra --preset small --padding --min-len 32 --seq-len 512 # fine-tuning-like lengths
    python bench.py --model roberta --data                                              # the input pipeline alone

Both sides are built from ONE config: ours from the model file's preset, the `transformers` model
of the same architecture from the same sizes (BertConfig, RobertaConfig, AlbertConfig or
ElectraConfig, attn_implementation="sdpa"), and our initial weights are copied into it, so both
start from the same point. Each side trains with the family's default objective as train.py runs
it (bert: MLM + NSP, roberta: MLM, albert: MLM + SOP, electra: generator MLM + 50 x replaced-token
detection, embeddings shared); `--objective mlm` picks the plain MLM model where a family has one.

A timed step is what train.py does: forward under autocast (--precision), backward (through a
GradScaler for fp16), gradient clipping to norm 1, AdamW step (cli.make_optimizer: fused on
CUDA and the CPU), zero_grad. After --warmup steps per side, --steps steps per side are timed INTERLEAVED
(ours, HF, ours, HF, ...), each pair on the same batch, so that drift in the machine's speed (other
jobs, clocks, temperature) hits both sides alike. The ratio is the median over pairs of
HF's step time / ours.

The table gives, per side: tokens/s (tokens per step / median step time; with --padding, REAL
tokens only), the median step time and its spread (min-max), the peak memory (CUDA only: the most
allocated during the side's steps, less the other side's weights and optimizer state, which stay
resident), and on a GPU the model FLOPs utilization (MFU, from the FLOP count the family declares:
modeling.Family.flops_per_token). On a CPU that other jobs share, `--threads 1 --clock cpu` times the
CPU work of each step instead of the elapsed time.

What each side does, as a user would run it:
  ours  the model file's pretraining class; the MLM head projects only the masked positions to the
        vocabulary; attention through `bert_kernels` (Triton on a GPU, SDPA otherwise: bert_kernels.BACKEND)
  HF    transformers' class with its default SDPA attention and its standard MLM head: the full
        vocabulary projection at EVERY position, cross-entropy with ignore_index = -100

`--data` times the input pipeline instead (data.PretrainingBatches.get_batch over the default corpus
or --data-files, tokenizer and token cache exactly as train.py builds them) and prints batches/s
and tokens/s served, to set beside the model's tokens/s.
"""
import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # transformers builds models from configs: nothing to fetch
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn as nn

import data
import tokenizer as tokenizers_lib
from cli import (FAMILIES, UsageError, add_setup_args, load_family, make_optimizer, mixed_precision, parse_overrides,
                 pick_device, plain_warnings, set_threads)

# the transformers class that does the same work as ours, per (family, objective)
HF_CLASSES = {
    ("bert", "mlm+nsp"): "BertForPreTraining",
    ("bert", "mlm"): "BertForMaskedLM",
    ("roberta", "mlm"): "RobertaForMaskedLM",
    ("albert", "mlm+sop"): "AlbertForPreTraining",
    ("albert", "mlm"): "AlbertForMaskedLM",
    ("electra", "rtd"): "ElectraForMaskedLM (generator) + ElectraForPreTraining (discriminator)",
    ("electra", "mlm"): "ElectraForMaskedLM",
}
HF_CONFIGS = {"bert": "BertConfig", "roberta": "RobertaConfig", "albert": "AlbertConfig", "electra": "ElectraConfig"}
# config fields that mean the same in our configs and in transformers' (the names were kept on purpose)
SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                 "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")
EXTRA_FIELDS = {"bert": ("classifier_dropout",), "roberta": ("classifier_dropout",),
                "albert": ("embedding_size", "num_hidden_groups", "inner_group_num", "classifier_dropout_prob"),
                "electra": ("embedding_size", "classifier_dropout")}
PEAK_TFLOPS = 989.0   # H100 SXM, bf16 dense, the spec sheet; MACHINE.md measured ~800 here (--peak-tflops 800)
MASK_ID, CLS_ID = 4, 2  # synthetic batches: ids 0-4 are special, ordinary tokens are drawn from [5, V)


# ----------------------------------------------------------------------------- arguments

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"model family: {', '.join(FAMILIES)}")
    p.add_argument("--objective", help="pretraining objective (default: the family's own, as train.py)")
    p.add_argument("--preset", help="model size (default: base on a GPU, mini on a CPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field of both sides, e.g. --set hidden_dropout_prob=0.0")
    p.add_argument("--vocab-size", type=int,
                   help="model vocabulary (default: the config's, e.g. 30522 for BERT); with --data the "
                        "vocabulary of the tokenizer trained there (default 8192, as train.py)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per row, padding included")
    p.add_argument("--batch-size", type=int, help="rows per step (default: 64 on a GPU, 8 on a CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    add_setup_args(p, seed_help="seeds the initial weights (both sides) and the synthetic batches")  # as train.py's
    p.add_argument("--compile", action="store_true", help="torch.compile both sides")
    p.add_argument("--padding", action="store_true",
                   help="rows of random lengths in [--min-len, --seq-len], right-padded (fine-tuning-like)")
    p.add_argument("--min-len", type=int, default=32, help="shortest row with --padding")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                   help=f"the device's peak bf16 dense TFLOP/s for MFU (default {PEAK_TFLOPS:g}: H100 spec sheet)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: CPU time of this process (a CPU shared with other jobs: use it "
                        "with --threads 1, it then counts the work and not the waiting)")
    p.add_argument("--data", action="store_true", help="time the input pipeline (data.py) instead of the models")
    p.add_argument("--data-files", nargs="+", help="with --data: text files, folders or globs (default: Python's docs)")
    p.add_argument("--tokenizer", help="with --data: a saved tokenizer (default: train one / reuse train.py's cache)")
    args = p.parse_args(argv)
    if args.model not in FAMILIES:
        p.error(f"unknown --model {args.model!r}; choose one of {', '.join(FAMILIES)}")
    for name in ("seq_len", "steps", "min_len", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.padding and args.min_len > args.seq_len:
        p.error(f"--min-len {args.min_len} is longer than --seq-len {args.seq_len}")
    if args.clock == "cpu" and args.device and not args.device.startswith("cpu"):
        p.error("--clock cpu times the CPU work of this process: it is for --device cpu")
    if args.data_files and not args.data:
        p.error("--data-files is for --data (timing the input pipeline)")
    return args


# ----------------------------------------------------------------------------- the two models

def hf_config(config, **kw):
    """Our config -> the transformers config class of the same family, same sizes, SDPA attention."""
    import transformers
    family = config.model_type
    cls = getattr(transformers, HF_CONFIGS[family])
    fields = {f: getattr(config, f) for f in SHARED_FIELDS + EXTRA_FIELDS[family]}
    return cls(**fields, attn_implementation="sdpa", **kw)


def _copy_weights(ours, hf):
    """Load our state dict into the HF model: the parameter names are the same by design. Only HF's tied copies
    (the decoder = word embeddings) and its non-persistent buffers may be left out; anything else is an error."""
    result = hf.load_state_dict(ours.state_dict(), strict=False)
    tied = {n for n, p in hf.named_parameters(remove_duplicate=False)} - {n for n, p in hf.named_parameters()}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{type(hf).__name__} does not take {type(ours).__name__}'s weights: missing {missing}, "
                           f"unexpected {result.unexpected_keys}: the config translation is wrong")


class HFElectra(nn.Module):
    """transformers' ELECTRA generator and discriminator, wired the way the paper (and our `Electra`) trains them:
    masked input -> generator MLM loss -> a sample at each masked position (no gradient) -> discriminator BCE
    on the corrupted text; loss = generator_weight * MLM + discriminator_weight * BCE; one embeddings module.
    `corrupt(input_ids, labels, logits at the masked positions)` -> (original, corrupted, is_replaced), each
    (B, T), is our Electra's own step (Electra.corrupt: the same sampling, temperature and vocabulary)."""

    def __init__(self, generator, discriminator, corrupt, generator_weight=1.0, discriminator_weight=50.0):
        super().__init__()
        self.generator, self.discriminator, self.corrupt = generator, discriminator, corrupt
        self.generator_weight, self.discriminator_weight = generator_weight, discriminator_weight
        embeddings = discriminator.electra.embeddings
        generator.electra.embeddings = embeddings                                  # shared, as in the paper
        generator.generator_lm_head.weight = embeddings.word_embeddings.weight     # re-tie the output matrix

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        gen = self.generator(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             labels=labels)                                         # logits (B, T, V)
        _, corrupted, is_replaced = self.corrupt(input_ids, labels, gen.logits[labels != -100])  # (B, T), no gradient
        disc = self.discriminator(input_ids=corrupted, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  labels=is_replaced.long())
        loss = self.generator_weight * gen.loss + self.discriminator_weight * disc.loss
        return SimpleNamespace(loss=loss, logits=disc.logits)


def build_pair(model, preset, objective=None, vocab_size=None, overrides=None, device="cpu", seed=0):
    """(ours, hf, config): our pretraining model for `objective` (default: the family's) and the transformers model
    of the same architecture and size, built from the same config, with our initial weights copied into it."""
    import transformers
    transformers.logging.set_verbosity_error()
    if model not in FAMILIES:
        raise UsageError(f"unknown model {model!r}; choose one of {', '.join(FAMILIES)}")
    family = load_family(model)
    objective = objective or family.default_objective
    if (model, objective) not in HF_CLASSES or objective not in family.pretraining:
        choices = [o for (m, o) in HF_CLASSES if m == model]
        raise UsageError(f"--model {model} has no --objective {objective!r} here; choose one of {', '.join(choices)}")
    config_cls = family.config
    kw = dict(overrides or {})
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    try:
        config = config_cls.from_preset(preset, **kw)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    options = config.hf_incompatible()                                # e.g. the `crammed` presets
    if options:
        raise UsageError(f"{model} {preset} uses {', '.join(options)}, which transformers' classes cannot "
                         "express: there is no HF model to compare with")
    torch.manual_seed(seed)
    ours = family.pretraining[objective](config)
    if objective == "rtd":                                 # a generator and a discriminator (the Family contract)
        gen = transformers.ElectraForMaskedLM(hf_config(config.generator_config()))
        disc = transformers.ElectraForPreTraining(hf_config(config))
        _copy_weights(ours.generator, gen)
        _copy_weights(ours.discriminator, disc)
        hf = HFElectra(gen, disc, ours.corrupt, config.generator_weight, config.discriminator_weight)
    else:
        hf = getattr(transformers, HF_CLASSES[model, objective])(hf_config(config))
        _copy_weights(ours, hf)
    return ours.to(device).train(), hf.to(device).train(), config


def n_params(module):
    return sum(p.numel() for p in module.parameters())                # shared / tied parameters counted once


# ----------------------------------------------------------------------------- batches

def make_batches(config, objective, batch_size, seq_len, n, padding=False, min_len=32, seed=0, masking=None):
    """n synthetic batches, the same tensors for both sides: random ordinary ids, data.Masker's MLM masking
    (15% of the real tokens, labels -100 elsewhere), [CLS] first, random NSP/SOP labels and segment ids
    (A = first half of the real tokens, B = the rest) for pair objectives. With `padding`, row lengths are
    drawn uniformly from [min_len, seq_len] and the rest is padding (attention_mask False)."""
    g = torch.Generator().manual_seed(seed)
    V, pad = config.vocab_size, config.pad_token_id
    if V <= MASK_ID + 2:
        raise UsageError(f"vocab_size {V} is too small for synthetic batches (ids 0-{MASK_ID} are special)")
    masker = data.Masker(V, MASK_ID, {0, 1, 2, 3, pad}, **(masking or {}))
    pair = objective in ("mlm+nsp", "mlm+sop")
    out = []
    for _ in range(n):
        ids = torch.randint(MASK_ID + 1, V, (batch_size, seq_len), generator=g)
        ids[:, 0] = CLS_ID
        if padding:
            lengths = torch.randint(min_len, seq_len + 1, (batch_size,), generator=g)
        else:
            lengths = torch.full((batch_size,), seq_len)
        attention_mask = torch.arange(seq_len)[None] < lengths[:, None]                 # (B, T) bool
        ids = ids.masked_fill(~attention_mask, pad)
        input_ids, labels = masker(ids, g)
        b = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if pair:
            b["token_type_ids"] = ((torch.arange(seq_len)[None] >= (lengths // 2)[:, None]) & attention_mask).long()
            name = "next_sentence_label" if objective == "mlm+nsp" else "sentence_order_label"
            b[name] = torch.randint(0, 2, (batch_size,), generator=g)
        else:
            b["token_type_ids"] = torch.zeros_like(input_ids)
        out.append(b)
    return out


# ----------------------------------------------------------------------------- a training step, timed

def train_step_fn(model, device, precision="fp32", lr=1e-4, clip=1.0, compile=False):
    """(step, optimizer): step(batch) does one complete training step as train.py does and returns the loss
    (detached): forward under autocast, backward (scaled for fp16), clip, AdamW step, zero_grad."""
    device = torch.device(device)
    optimizer = make_optimizer(model, lr, 0.01, fused=device.type in ("cuda", "cpu"))   # as train.py does
    _, autocast, scaler = mixed_precision(precision, device)
    forward = torch.compile(model) if compile else model

    def step(batch):
        with autocast:
            loss = forward(**batch).loss
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer


def time_interleaved(steps, batches, warmup, n, device="cpu", clock=time.perf_counter):
    """steps: {name: step(batch)}. Runs `warmup` untimed steps per side, then n timed rounds; in round i every
    side, in turn, does one step on batches[(warmup + i) % len(batches)]. Returns {name: {"ms": [n step times],
    "peak_bytes": max CUDA memory allocated during its steps (None on a CPU), "loss": [losses]}}.
    `clock` is wall time; time.process_time (CPU seconds of this process) is steadier on a busy CPU."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    res = {name: {"ms": [], "peak_bytes": 0 if cuda else None, "loss": []} for name in steps}
    for i in range(warmup + n):
        batch = batches[i % len(batches)]
        for name, step in steps.items():
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = clock()
            loss = step(batch)
            sync()
            dt = clock() - t0
            if i >= warmup:
                r = res[name]
                r["ms"].append(1000 * dt)
                r["loss"].append(float(loss))
                if cuda:
                    r["peak_bytes"] = max(r["peak_bytes"], torch.cuda.max_memory_allocated(device))
    return res


def resident_bytes(model, optimizer):
    """What a side keeps on the device between its steps: parameters and optimizer state (grads are set to None)."""
    tensors = {id(p): p for p in model.parameters()}
    tensors.update({id(t): t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ----------------------------------------------------------------------------- model FLOPs

FLOP_FORMULA = ("FLOPs/token (useful, both sides alike) = 6 x matmul weights applied per token "
                "(encoder 4H^2 + 2HI per layer) + 12 x L x T x H (attention) + 6 x f x (H*E' + E'*V) "
                "(MLM head at the f = 15% masked tokens only) + heads; see modeling.Family.flops_per_token")


# ----------------------------------------------------------------------------- the input pipeline

def bench_data(args):
    """data.PretrainingBatches.get_batch alone, on the corpus, tokenizer and cache train.py would use."""
    family = load_family(args.model)
    objective = args.objective or family.default_objective
    if objective not in family.pretraining:
        raise UsageError(f"--model {args.model} does not train with --objective {objective!r}; "
                         f"choose one of {', '.join(family.pretraining)}")
    # the data API as train.py calls it, with its defaults, so that the corpus, the tokenizer and the token
    # cache are the ones `python train.py --model X` would use (and reuse its caches)
    batch_size = args.batch_size or 8
    files = data.resolve_data(args.data_files, data.CACHE_DIR)
    tok = (tokenizers_lib.load(args.tokenizer) if args.tokenizer
           else data.corpus_tokenizer(files, family.tokenizer_kind, args.vocab_size or 8192))
    corpus, _ = data.build_cache(files, tok, data.CACHE_DIR)
    try:
        batches = data.pretraining_batches(corpus, tok, objective, args.seq_len, batch_size, args.seed,
                                           family.masking, packed=family.packed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    packed = batches.packed
    for i in range(args.warmup):
        batches.get_batch(i)
    times, real = [], 0
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        b = batches.get_batch(i)
        times.append(time.perf_counter() - t0)
        real += int(b["attention_mask"].sum())
    med = statistics.median(times)
    slots = batch_size * args.seq_len
    print(f"\ninput pipeline: {args.model} {objective}{' (packed)' if packed else ''}, batch {batch_size} x seq "
          f"{args.seq_len}, {len(files)} file(s), {corpus.n_tokens / 1e6:.2f}M tokens, vocabulary {tok.vocab_size}; "
          f"data.PretrainingBatches.get_batch, one thread, {args.steps} batches after {args.warmup} warm-up")
    print("| batches/s | ms/batch median (min-max) | tokens/s served (B x T) | real tokens/s (no padding) |")
    print("|---:|---:|---:|---:|")
    print(f"| {1 / med:,.1f} | {1000 * med:.2f} ({1000 * min(times):.2f}-{1000 * max(times):.2f}) | "
          f"{slots / med:,.0f} | {real / args.steps / med:,.0f} |")
    return {"batches_per_s": 1 / med, "tokens_per_s": slots / med, "real_tokens_per_s": real / args.steps / med}


# ----------------------------------------------------------------------------- main

def _fmt_bytes(n):
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    if args.data:
        return bench_data(args)
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    gpu = device.type == "cuda"
    preset = args.preset or ("base" if gpu else "mini")
    batch_size = args.batch_size or (64 if gpu else 8)
    precision = mixed_precision(args.precision, device).name
    family = load_family(args.model)
    objective = args.objective or family.default_objective

    ours, hf, config = build_pair(args.model, preset, objective, args.vocab_size,
                                  parse_overrides(args.set), device, args.seed)
    max_len = config.max_position_embeddings - family.position_offset
    if args.seq_len > max_len:
        raise UsageError(f"--seq-len {args.seq_len} is longer than the model's {max_len} positions")
    cpu_batches = make_batches(config, objective, batch_size, args.seq_len, args.warmup + args.steps,
                               args.padding, args.min_len, args.seed, family.masking)
    batches = [{k: v.to(device) for k, v in b.items()} for b in cpu_batches]
    sides = {}
    for name, m in (("ours", ours), ("HF", hf)):
        sides[name] = train_step_fn(m, device, precision, compile=args.compile)
    if args.clock == "cpu" and device.type != "cpu":
        raise UsageError("--clock cpu times the CPU work of this process: it is for --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    res = time_interleaved({k: s for k, (s, _) in sides.items()}, batches, args.warmup, args.steps, device, clock)

    # tokens per step (real ones with --padding) and the attention length for the FLOP count, over the timed batches
    timed = [cpu_batches[i % len(cpu_batches)] for i in range(args.warmup, args.warmup + args.steps)]
    real = [int(b["attention_mask"].sum()) for b in timed]
    tokens_per_step = statistics.mean(real)
    lengths = torch.cat([b["attention_mask"].sum(1) for b in timed]).double()
    attn_len = float((lengths ** 2).sum() / lengths.sum())         # keys per real token (= seq_len unpadded)
    mlm_fraction = family.masking["mlm_probability"]
    fpt = family.flops_per_token(config, tokens_per_step / batch_size, objective, mlm_fraction, attn_len)

    others = {"ours": resident_bytes(hf, sides["HF"][1]), "HF": resident_bytes(ours, sides["ours"][1])}
    rows = {}
    for name, r in res.items():
        med = statistics.median(r["ms"])
        tps = tokens_per_step / (med / 1000)
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] - others[name]
        rows[name] = dict(tokens_per_s=tps, ms=med, lo=min(r["ms"]), hi=max(r["ms"]), peak_bytes=peak,
                          mfu=fpt * tps / (args.peak_tflops * 1e12) if gpu else None,
                          loss=(r["loss"][0], r["loss"][-1]))
    ratio = statistics.median(h / o for o, h in zip(res["ours"]["ms"], res["HF"]["ms"]))

    import bert_kernels
    import transformers
    dev_name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    hf_what = HF_CLASSES[args.model, objective]
    print(f"\n{args.model} {preset}, objective {objective}: {n_params(ours) / 1e6:.2f}M parameters each side "
          f"(HF {n_params(hf) / 1e6:.2f}M); batch {batch_size} x seq {args.seq_len}"
          f"{f', padded: lengths uniform in [{args.min_len}, {args.seq_len}]' if args.padding else ''}; "
          f"{precision}; {dev_name}; torch {torch.__version__}, transformers {transformers.__version__}"
          f"{'; torch.compile' if args.compile else ''}; {args.steps} steps per side after {args.warmup} "
          f"warm-up, interleaved{'; clock: CPU time of the process' if args.clock == 'cpu' else ''}")
    print(f"  ours: {args.model}.py {type(ours).__name__}, sparse MLM head (vocabulary projection at the masked "
          f"positions only), attention: kernels backend {bert_kernels.BACKEND!r}")
    print(f"  HF:   transformers {hf_what}, attn_implementation='sdpa', dense MLM head (every position)")
    print(f"  step: forward{f' (autocast {precision})' if precision != 'fp32' else ''}, backward, clip to 1.0, "
          f"AdamW, zero_grad; same initial weights, same batches")
    mfu_col = " MFU |" if gpu else ""
    print(f"\n| side | tokens/s | ms/step (median) | spread (min-max) | peak memory | loss first->last |{mfu_col}")
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for name, r in rows.items():
        mfu = f" {100 * r['mfu']:.1f}% |" if gpu else ""
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['ms']:.1f} | {r['lo']:.1f}-{r['hi']:.1f} | "
              f"{_fmt_bytes(r['peak_bytes'])} | {r['loss'][0]:.3f}->{r['loss'][1]:.3f} |{mfu}")
    print(f"| ours/HF | {ratio:.2f}x | | | | |" + (" |" if gpu else ""))
    print(f"\nratio = median over the {args.steps} pairs of HF step time / ours (>1: ours is faster). "
          f"tokens/s = {'REAL (non-padding) ' if args.padding else ''}tokens per step "
          f"({tokens_per_step:,.0f}) / median step time.")
    if gpu:
        print(f"peak memory = torch.cuda.max_memory_allocated during the side's steps, minus the other side's "
              f"parameters and optimizer state (resident meanwhile).")
        print(f"MFU = {fpt / 1e6:,.1f} MFLOPs/token x tokens/s / {args.peak_tflops:g} TFLOP/s (peak bf16 dense; "
              f"989 = H100 spec sheet, ~800 measured on this machine per MACHINE.md).")
    else:
        print(f"peak memory: not measured on a CPU (the process RSS high-water mark cannot be reset per side). "
              f"Model FLOPs: {fpt / 1e6:,.1f} MFLOPs/token; MFU is given on a GPU only.")
    print(FLOP_FORMULA + (f"; T = {attn_len:.1f} (mean keys per real token)" if args.padding else f"; T = {args.seq_len}"))
    return {"rows": rows, "ratio": ratio, "flops_per_token": fpt, "preset": preset, "batch_size": batch_size,
            "precision": precision, "device": str(device)}


if __name__ == "__main__":
    plain_warnings("bench.py")
    try:
        main()
    except (UsageError, data.DataError) as e:
        sys.exit(f"bench.py: error: {e}")
