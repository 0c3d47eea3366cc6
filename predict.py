"""Fill masks, or spot replaced tokens, with a pretrained checkpoint.

    python predict.py runs/bert "The capital of France is [MASK]."     # top-5 fillers for every mask
    python predict.py runs/roberta -k 10 "Paris is the <mask> of France." "A <mask> <mask> day."
    python predict.py runs/electra "The [MASK] sat on the mat."        # an ELECTRA run: fills with generator/
    python predict.py --rtd runs/electra "the chef ate the meal"       # which tokens look replaced?
    python predict.py runs/bert < sentences.txt                        # no text (or -): one text a line on stdin

CHECKPOINT is a run directory written by train.py or a Hugging Face model directory (config.json,
model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt); config.json's "model_type"
names the family (bert, roberta, albert, electra). Write a mask as [MASK] or <mask>, whichever the
tokenizer uses: both are rewritten to its own mask token. An input longer than the model's
positions is an error rather than truncated, since truncation could cut off the very mask asked about.

As a library:

    model, tok = predict.load("runs/bert")                      # task="fill-mask" (default) or "rtd"
    predict.fill_mask(model, tok, ["Paris is the [MASK] of France."], top_k=3)
    # -> [[[Filler(token='capital', prob=0.83, id=2364), ...]]]      per text, per mask, best first
    predict.fill_mask_ids(model, tok, input_ids, attention_mask)    # the same for ids already masked
    disc, tok = predict.load("runs/electra", task="rtd")
    predict.detect_replaced(disc, tok, ["the chef ate the meal"])
    # -> [[Verdict(token='the', p_replaced=0.02, id=1996), ...]]     per text, per token of the text
"""
import argparse
import itertools
import json
import re
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

import tokenizer as tokenizers_lib
from cli import FAMILIES, Filler, evaluating, fill_mask_ids, load_family, pick_device, token_text

PLACEHOLDERS = ("[MASK]", "<mask>")      # accepted for any tokenizer; rewritten to its own mask token

class PredictError(ValueError):
    """A checkpoint that cannot do the task, or input it cannot take: the CLI prints it as one line."""


class Verdict(NamedTuple):
    token: str       # as Filler.token (cli.Filler: the token as the tokenizer writes it alone)
    p_replaced: float
    id: int


# ----------------------------------------------------------------------------- loading

def _read_config(path):
    if not (path / "config.json").is_file():
        what = ("does not exist" if not path.exists() else "is not a directory" if not path.is_dir()
                else "has no config.json")
        raise PredictError(f"{path} is not a checkpoint directory: it {what} (expected a train.py run directory "
                           "or a Hugging Face model directory with config.json and model.safetensors)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise PredictError(f"{path / 'config.json'} is not valid JSON ({e})") from None
    if config.get("model_type") not in FAMILIES:
        raise PredictError(f"{path / 'config.json'} has model_type {config.get('model_type')!r}; "
                           f"this repository has {', '.join(FAMILIES)}")
    return config


def _weight_names(path):
    """The checkpoint's parameter names, read without loading the tensors where the format allows."""
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            names = list(f.keys())
    elif (path / "model.safetensors.index.json").is_file():
        names = list(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"])
    elif (path / "pytorch_model.bin.index.json").is_file():
        names = list(json.loads((path / "pytorch_model.bin.index.json").read_text())["weight_map"])
    elif (path / "pytorch_model.bin").is_file():
        names = list(torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True))
    else:
        raise PredictError(f"{path} has a config.json but no weights: expected model.safetensors or pytorch_model.bin")
    # the old spellings from_pretrained also reads: TF-era LayerNorm gamma/beta, the MLM bias as decoder.bias
    return {n.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
             .replace("predictions.decoder.bias", "predictions.bias") for n in names}


def _has(names, prefix):
    return any(n.startswith(prefix) for n in names)


def _from_pretrained(cls, path, names):
    """cls.from_pretrained, tolerating weights cls has no place for but no weight it lacks.

    A checkpoint often holds more than fill-mask needs (a pooler, the NSP/SOP head): strict=False
    leaves those out. strict=False would also initialise a missing weight at random, and the
    predictions of random weights still look like predictions, so a missing one is an error here.
    """
    try:
        with warnings.catch_warnings(record=True) as said:  # stdout is for the predictions; what it says goes to stderr
            warnings.simplefilter("always")
            model = cls.from_pretrained(path, strict=False)
    except (ValueError, FileNotFoundError) as e:           # its messages for a mismatched or broken checkpoint
        raise PredictError(str(e)) from None
    missing = sorted(k for k in model.state_dict() if k not in names)
    if missing:
        raise PredictError(f"{path} lacks {len(missing)} weights that {cls.__name__} needs, e.g. {missing[:3]}")
    for w in said:                                         # as plain lines, e.g. the NSP head left out
        print(w.message, file=sys.stderr)
    return model


def _load_tokenizer(path):
    # an ELECTRA run keeps one tokenizer at its root, for the discriminator there and the generator in generator/
    for folder in [path] + ([path.parent] if path.name == "generator" else []):
        if any((folder / name).is_file() for name in tokenizers_lib.FILES):
            try:
                return tokenizers_lib.load(folder)
            except (ValueError, OSError) as e:
                raise PredictError(f"cannot read the tokenizer in {folder}: {e}") from None
    raise PredictError(f"no tokenizer in {path}: expected {' or '.join(tokenizers_lib.FILES)} "
                       "(train.py saves one in every run directory)")


def load(path, task="fill-mask", device="cpu"):
    """(model, tokenizer) from a checkpoint directory, the model in eval mode on `device`.

    task="fill-mask": the family's MLM class; given an ELECTRA run directory (the discriminator at
    its root), its generator/ is used instead, and said on stderr. task="rtd": the ELECTRA discriminator.
    """
    if task not in ("fill-mask", "rtd"):
        raise ValueError(f"task must be 'fill-mask' or 'rtd', got {task!r}")
    path = Path(path)
    config = _read_config(path)
    family, names = load_family(config["model_type"]), _weight_names(path)
    what = f"{path} ({(config.get('architectures') or [family.name + ' checkpoint'])[0]})"
    disc, disc_head = family.discriminator, family.discriminator_head       # ELECTRA's, None elsewhere
    if task == "rtd":
        if disc is None:
            raise PredictError(f"--rtd needs an ELECTRA discriminator, and {what} is a {family.name} model: "
                               "drop --rtd to fill masks with it")
        if not _has(names, disc_head):
            hint = (f"this is a generator; pass its run directory {path.parent}" if path.name == "generator"
                    else f"pass an ELECTRA run directory (its root) or an {disc.__name__} checkpoint")
            raise PredictError(f"{what} has no replaced-token detection head ({disc_head}*): {hint}")
        cls = disc
    else:
        cls, head = family.masked_lm, family.mlm_head
        if not _has(names, head):
            if disc is not None and _has(names, disc_head):
                if (path / "generator" / "config.json").is_file():
                    print(f"note: {path} holds an ELECTRA discriminator, which cannot fill masks; "
                          f"using the generator in {path / 'generator'}", file=sys.stderr)
                    return load(path / "generator", task, device)
                raise PredictError(f"{what} is an ELECTRA discriminator, which has no MLM head and cannot fill "
                                   "masks: pass the generator/ directory of its run, or add --rtd to see which "
                                   "tokens it thinks were replaced")
            raise PredictError(f"{what} has no MLM head (no {head}* weights), so it cannot fill masks: pass a "
                               f"checkpoint with one, e.g. a train.py run directory or a {cls.__name__}")
    model = _from_pretrained(cls, path, names)
    tok = _load_tokenizer(path)
    if tok.vocab_size > model.config.vocab_size:
        raise PredictError(f"the tokenizer has {tok.vocab_size} tokens but the model in {path} knows "
                           f"{model.config.vocab_size}: they do not belong together")
    return model.to(device).eval(), tok


# ----------------------------------------------------------------------------- predicting

def prepare(text, tok):
    """`text` with every mask placeholder written as tok's mask token, with no whitespace before it.

    The space before a mask belongs to the word the mask stands for: byte-level BPE (RoBERTa)
    spells ' paris' as one token 'Ġparis', but reads 'is <mask>' as 'Ġis', 'Ġ', '<mask>' (our
    tokenizer does not strip spaces around special tokens), leaving the mask to stand for a word
    with no space. 'is<mask>' reads as 'Ġis', '<mask>'. WordPiece and Unigram split the same either way.
    """
    marks = "|".join(re.escape(m) for m in sorted({*PLACEHOLDERS, tok.mask_token}, key=len, reverse=True))
    return re.sub(rf"\s*(?:{marks})", lambda _: tok.mask_token, text)


def max_length(model, tok):
    """The longest input, special tokens included, that both the tokenizer and the position table take."""
    # RoBERTa numbers positions from padding_idx + 1, so 2 of its table's rows never hold a token
    offset = load_family(model.config.model_type).position_offset
    return min(tok.model_max_length, model.config.max_position_embeddings - offset)


def _encode(tok, texts, limit):
    """A padded batch (input_ids, attention_mask, token_type_ids) of `texts`; too long an input is an error."""
    batch = tok.encode_batch(texts, padding=True, return_tensors="pt")
    for text, n in zip(texts, batch["attention_mask"].sum(1).tolist()):
        if n > limit:
            raise PredictError(f"the input {text[:40]!r}... is {n} tokens long, and the model reads at most "
                               f"{limit} (special tokens included): shorten it")
    return batch


def _chunks(items, n):
    items = iter(items)
    while chunk := list(itertools.islice(items, n)):
        yield chunk


def fill_mask(model, tok, texts, top_k=5, batch_size=16):
    """The top_k fillers of every mask in every text: a list per text, of a list per mask (in reading
    order), of `Filler`s, most probable first. `model`: an MLM (any XForMaskedLM / XForPreTraining)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    limit, results = max_length(model, tok), []
    for chunk in _chunks(texts, batch_size):
        b = _encode(tok, [prepare(t, tok) for t in chunk], limit)
        for text, ids in zip(chunk, b["input_ids"]):
            if tok.mask_id not in ids:
                raise PredictError(f"no mask in {text!r}: write {tok.mask_token} where a word is missing "
                                   f"(this tokenizer's mask token; {' and '.join(PLACEHOLDERS)} both work)")
        results += fill_mask_ids(model, tok, b["input_ids"], b["attention_mask"], b["token_type_ids"], top_k)
    return results


def detect_replaced(discriminator, tok, texts, batch_size=16):
    """For each text, a `Verdict` per token of the text (not the [CLS]/[SEP] around it): the
    probability the ELECTRA discriminator gives to 'this token was replaced'."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    device = next(discriminator.parameters()).device
    added = {tok.cls_id, tok.sep_id, tok.pad_id}                 # what the tokenizer puts around the text
    limit, results = max_length(discriminator, tok), []
    with evaluating(discriminator):
        for chunk in _chunks(texts, batch_size):
            b = {k: v.to(device) for k, v in _encode(tok, chunk, limit).items()}
            logits = discriminator(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits  # (B, T)
            p_replaced = torch.sigmoid(logits.float()).tolist()
            for ids, ps in zip(b["input_ids"].tolist(), p_replaced):
                results.append([Verdict(token_text(tok, i), p, i) for i, p in zip(ids, ps) if i not in added])
    return results


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1].split("\n\nAs a library")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a train.py run directory or a Hugging Face model directory")
    p.add_argument("texts", nargs="*", help="texts to read (none, or -: one text a line from stdin)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="fillers shown per mask (default 5)")
    p.add_argument("--rtd", action="store_true",
                   help="ELECTRA: show which tokens the discriminator thinks were replaced, instead of filling masks")
    p.add_argument("--threshold", type=float, default=0.5, help="--rtd: p_replaced above which a token is "
                   "called replaced (default 0.5)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default 16)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available: cuda, mps, else cpu)")
    args = p.parse_intermixed_args(argv)                      # flags may come after the texts
    if args.top_k < 1 or args.batch_size < 1:
        p.error("-k and --batch-size must be at least 1")
    if not 0 < args.threshold < 1:
        p.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    return args


def _read_texts(texts):
    if texts and texts != ["-"]:
        return texts
    if sys.stdin.isatty():
        print("reading texts from stdin, one a line (Ctrl-D to end)", file=sys.stderr)
    return (line.strip() for line in sys.stdin if line.strip())       # a generator: printed as they come


def _print_fillers(number, text, masks, mask_token):
    print(f"text {number}: {text}")
    for m, fillers in enumerate(masks, 1):
        print(f"  {mask_token} {m} of {len(masks)}")
        width = max(len(repr(f.token)) for f in fillers)
        for rank, f in enumerate(fillers, 1):
            print(f"    {rank:>2}. {f.token!r:<{width}}  {f.prob:.4f}")


def _print_verdicts(number, text, verdicts, threshold):
    print(f"text {number}: {text}")
    width = max([len("token")] + [len(repr(v.token)) for v in verdicts])
    print(f"    {'token':<{width}}  p_replaced")
    for v in verdicts:
        print(f"    {v.token!r:<{width}}  {v.p_replaced:.4f}" + ("  <- replaced" if v.p_replaced > threshold else ""))
    flagged = [v.token.strip() for v in verdicts if v.p_replaced > threshold]
    print(f"  replaced (p > {threshold:g}): {', '.join(flagged) if flagged else 'none'}")


def main(argv=None):
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
    except RuntimeError as e:
        raise PredictError(f"--device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {args.device}: this machine has no usable CUDA GPU")
    model, tok = load(args.checkpoint, task="rtd" if args.rtd else "fill-mask", device=device)
    number = 0
    for chunk in _chunks(_read_texts(args.texts), args.batch_size):
        if args.rtd:
            for text, verdicts in zip(chunk, detect_replaced(model, tok, chunk, args.batch_size)):
                number += 1
                _print_verdicts(number, text, verdicts, args.threshold)
        else:
            for text, masks in zip(chunk, fill_mask(model, tok, chunk, args.top_k, args.batch_size)):
                number += 1
                _print_fillers(number, text, masks, tok.mask_token)
        sys.stdout.flush()                                              # show each batch as soon as it is done
    if number == 0:
        raise PredictError("no text to read: give texts as arguments or one a line on stdin")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PredictError as e:
        sys.exit("predict.py: error: " + " ".join(line.strip() for line in str(e).splitlines()))
