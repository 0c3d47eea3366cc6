"""Train, load and save the subword tokenizers of the BERT family, on the HF `tokenizers` library.

Three kinds, one per family, each built exactly like the `transformers` tokenizer of that family so
that a saved tokenizer reads back through `AutoTokenizer` and gives the same ids:

  wordpiece  BERT, ELECTRA   BertNormalizer (lowercase + strip accents by default), BertPreTokenizer,
                             WordPiece with '##' continuations; [CLS] A [SEP] (B [SEP]), types 0..0 1..1
  bpe        RoBERTa         byte-level BPE (GPT-2 style: every byte is in the vocab, so nothing is <unk>),
                             no normalizer (cased), ByteLevel(add_prefix_space=False) as roberta-base;
                             <s> A </s> (</s> B </s>), types all 0
  unigram    ALBERT          SentencePiece-style Unigram with '▁' word markers (Metaspace), and the normalizer
                             of transformers' AlbertTokenizer: `` and '' -> ", NFKD + strip accents, lowercase
                             (albert-base-v2 adds SentencePiece's precompiled NFKC map, which needs a .model file);
                             [CLS] A [SEP] (B [SEP]), types 0..0 1..1

`train(texts_or_files, kind)` trains one, `load(path)` reads ours or a Hugging Face checkpoint
(tokenizer.json, or a bare BERT vocab.txt), `Tokenizer.save(dir)` writes the HF layout.
"""
import codecs
import itertools
import json
import os
import re
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

KINDS = ("wordpiece", "bpe", "unigram")
SPECIAL_TOKENS = {  # per kind, in id order: a freshly trained tokenizer gives them ids 0..4
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "unigram": ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
}
_ROLES = {"wordpiece": ("pad", "unk", "cls", "sep", "mask"), "bpe": ("cls", "pad", "sep", "unk", "mask"),
          "unigram": ("pad", "unk", "cls", "sep", "mask")}
_DEFAULTS = {kind: dict(zip(_ROLES[kind], SPECIAL_TOKENS[kind])) for kind in KINDS}  # kind -> role -> token
_CANDIDATES = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
               "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>")}
_MODEL_KIND = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}
HF_CLASS = {"wordpiece": "BertTokenizerFast", "bpe": "RobertaTokenizerFast", "unigram": "AlbertTokenizerFast"}
MODEL_MAX_LENGTH = 512
FILES = ("tokenizer.json", "vocab.txt")  # what `load` looks for in a directory, in this order
_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text):
    """A Python str may hold lone surrogates, which UTF-8 (and so the Rust library) cannot: each becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}: expected one of {KINDS}")


def _pipeline(kind, lowercase):
    """(normalizer, pre_tokenizer, decoder) of `kind`, the recipe its `transformers` class uses."""
    if kind == "wordpiece":
        return (normalizers.BertNormalizer(lowercase=lowercase),  # strips accents iff lowercase, as BERT
                pre_tokenizers.BertPreTokenizer(), decoders.WordPiece(prefix="##"))
    if kind == "bpe":
        return (normalizers.Lowercase() if lowercase else None,
                pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.NFKD(),
             normalizers.StripAccents()] + ([normalizers.Lowercase()] if lowercase else [])
    return (normalizers.Sequence(steps),
            pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                     pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]),
            decoders.Metaspace(replacement="▁", prepend_scheme="always"))


def _post_processor(kind, cls, sep, cls_id, sep_id):
    if kind == "bpe":  # RoBERTa: <s> A </s> and <s> A </s></s> B </s>, all type 0
        return processors.RobertaProcessing((sep, sep_id), (cls, cls_id), trim_offsets=True, add_prefix_space=False)
    return processors.TemplateProcessing(single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
                                         special_tokens=[(cls, cls_id), (sep, sep_id)])


def _training_input(texts_or_files):
    """('files', [paths]) when given a path or a list of paths, else ('texts', iterator of str)."""
    if isinstance(texts_or_files, (str, os.PathLike)):  # one path (a bare string is never a corpus)
        texts_or_files = [Path(texts_or_files)]
    items = iter(texts_or_files)
    first = next(items, None)
    if first is None:
        raise ValueError("train() got no texts and no files")
    items = itertools.chain([first], items)
    if isinstance(first, os.PathLike) or os.path.isfile(first):
        files = [str(p) for p in items]
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"training files not found: {missing[:5]}")
        return "files", files
    return "texts", items


def _lines(files, encoding, errors):
    """The lines of text files decoded by Python (the library reads UTF-8 only), line endings kept as it does."""
    for file in files:
        with open(file, encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors=errors, newline="") as f:
            yield from f


def train(texts_or_files, kind="wordpiece", vocab_size=8192, min_frequency=2, lowercase=None, show_progress=False,
          encoding="utf-8", errors="strict"):
    """Train a `kind` tokenizer on an iterable of texts or a list of text files (one sentence or document a line).

    Files are read as UTF-8 by the library; with another `encoding`, or `errors` "replace" / "ignore" for
    undecodable bytes (as `data.read_documents`), Python decodes them.

    lowercase=None means the family's default: True for wordpiece (bert-base-uncased) and unigram
    (albert-base-v2), False for bpe (roberta-base). The Unigram trainer has no min_frequency.
    WordPiece and Unigram training break frequency ties in hash order, so two runs may number some tokens
    differently: train once, save, and load that everywhere (e.g. on every DDP rank).
    """
    _check_kind(kind)
    lowercase = (kind != "bpe") if lowercase is None else lowercase
    specials = SPECIAL_TOKENS[kind]
    model = {"wordpiece": models.WordPiece(unk_token=_DEFAULTS[kind]["unk"]), "bpe": models.BPE(),
             "unigram": models.Unigram()}[kind]
    if kind == "wordpiece":
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=show_progress)
    elif kind == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
    else:
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                          unk_token=_DEFAULTS[kind]["unk"], show_progress=show_progress)
    backend = Backend(model)
    backend.normalizer, backend.pre_tokenizer, backend.decoder = _pipeline(kind, lowercase)
    source, data = _training_input(texts_or_files)
    try:
        encoding = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r}") from None
    if errors not in ("strict", "replace", "ignore"):
        raise ValueError(f"errors={errors!r}: expected strict, replace or ignore")
    if source == "files" and (encoding, errors) == ("utf-8", "strict"):
        try:
            backend.train(data, trainer)
        except Exception as e:  # the library's own error type
            if "UTF-8" not in str(e):
                raise
            raise ValueError(f"the training files are not all UTF-8 ({e}): {data[:5]}; pass their encoding, or "
                             f"errors='replace' (data.resolve_data names the file and byte offset)") from None
    else:
        lines = _lines(data, encoding, errors) if source == "files" else data
        backend.train_from_iterator((_utf8(t) for t in lines), trainer)
    # one JSON round trip, so the trained tokenizer equals the one load() gives back byte for byte (the Unigram
    # scores are floats that print to fewer digits than they hold)
    return Tokenizer(Backend.from_str(backend.to_str()), kind)


def _read_config(directory):
    """Special tokens and settings from tokenizer_config.json, overridden by special_tokens_map.json."""
    config = {}
    for file in (directory / "tokenizer_config.json", directory / "special_tokens_map.json"):
        if file.is_file():
            try:
                settings = json.loads(file.read_text(encoding="utf-8"))
            except ValueError as e:  # not JSON, or not UTF-8
                raise ValueError(f"{file} is not valid JSON ({e})") from None
            if not isinstance(settings, dict):
                raise ValueError(f"{file} holds a JSON {type(settings).__name__}, not an object of settings")
            config.update(settings)
    for key, value in config.items():  # {"content": "[CLS]", "lstrip": ...} -> "[CLS]"
        if key.endswith("_token") and isinstance(value, dict):
            config[key] = value.get("content")
    return config


def _bert_from_vocab(vocab_file, config):
    """BERT's pipeline around a bare vocab.txt, honouring do_lower_case and friends from tokenizer_config.json."""
    names = {role: config.get(f"{role}_token") or _DEFAULTS["wordpiece"][role] for role in _ROLES["wordpiece"]}
    backend = Backend(models.WordPiece.from_file(str(vocab_file), unk_token=names["unk"]))
    backend.normalizer = normalizers.BertNormalizer(
        lowercase=config.get("do_lower_case", True), strip_accents=config.get("strip_accents"),
        handle_chinese_chars=config.get("tokenize_chinese_chars", True))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def load(path):
    """Load a tokenizer from a directory (ours or a Hugging Face checkpoint) or a tokenizer.json / vocab.txt file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}: expected a directory holding tokenizer.json or "
                                f"vocab.txt, or one of those files")
    file = path
    if path.is_dir():
        file = next((path / n for n in FILES if (path / n).is_file()), None)
        if file is None:
            raise FileNotFoundError(f"{path} is a directory without tokenizer.json or vocab.txt: found no tokenizer")
    config = _read_config(file.parent)
    try:
        backend = _bert_from_vocab(file, config) if file.suffix == ".txt" else Backend.from_file(str(file))
    except Exception as e:  # the library's own error type: a truncated, corrupt or hand-edited file
        raise ValueError(f"{file} is not a tokenizer the tokenizers library can read ({e})") from None
    max_len = config.get("model_max_length") or MODEL_MAX_LENGTH  # HF writes 1e30 for "no limit"
    tokens = {role: config[f"{role}_token"] for role in _CANDIDATES if config.get(f"{role}_token")}
    return Tokenizer(backend, tokens=tokens, model_max_length=max_len if max_len < 1e9 else MODEL_MAX_LENGTH)


def _write_atomic(path, text):
    """Write to a temporary name, then rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Tokenizer:
    """A `tokenizers.Tokenizer` (`.backend`) plus the family's special tokens and the batch helpers we need."""

    def __init__(self, backend, kind=None, tokens=None, model_max_length=MODEL_MAX_LENGTH):
        model_type = type(backend.model).__name__
        self.kind = kind or _MODEL_KIND.get(model_type)
        if self.kind is None:
            raise ValueError(f"unsupported tokenizer model {model_type}: expected one of {list(_MODEL_KIND)}")
        _check_kind(self.kind)
        backend.no_padding()  # padding and truncation are per call (encode_batch), never baked in
        backend.no_truncation()
        self.backend, self.model_max_length = backend, model_max_length
        vocab = backend.get_vocab(with_added_tokens=True)
        tokens = tokens or {}
        for role, candidates in _CANDIDATES.items():  # the given name, then this kind's, then the other family's
            names = [tokens.get(role), _DEFAULTS[self.kind][role], *candidates]
            found = next((t for t in names if t in vocab), None)
            if found is None:
                raise ValueError(f"no {role} token in the vocabulary: looked for {[n for n in names if n]}")
            setattr(self, f"{role}_token", found)
            setattr(self, f"{role}_id", vocab[found])
        registered = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        ours = [getattr(self, f"{role}_token") for role in _CANDIDATES]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)  # never split, skipped by decode
                                    for t in ours if t not in registered])
        if backend.post_processor is None:
            backend.post_processor = _post_processor(self.kind, self.cls_token, self.sep_token,
                                                     self.cls_id, self.sep_id)
        self.special_ids = sorted(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        self._check_template()

    def _check_template(self):
        """The backend's post-processor must agree with `with_special_tokens`, which the data pipeline uses."""
        a, b = "Probe one.", "And two"
        got = self.backend.encode(a, b)
        want = self.with_special_tokens(*self.tokenize_batch([a, b]))
        if (got.ids, got.type_ids) != want:
            raise ValueError(f"this tokenizer's post-processor does not add special tokens the {self.kind} way "
                             f"({self.backend.post_processor}): expected {want}, got {(got.ids, got.type_ids)}")

    @property
    def vocab_size(self):
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def lowercase(self):
        return self.backend.normalizer is not None and self.backend.normalizer.normalize_str("A") == "a"

    def __len__(self):
        return self.vocab_size

    def __repr__(self):
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, lowercase={self.lowercase})"

    def encode(self, text, pair=None, add_special_tokens=True):
        pair = None if pair is None else _utf8(pair)
        return self.backend.encode(_utf8(text), pair, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, pairs=None, add_special_tokens=True, max_length=None, padding=False,
                     return_tensors=None):
        """Encode a batch like HF's tokenizer(...): padding False / True (= "longest") / "max_length";
        max_length truncates longest-first, keeping the special tokens; return_tensors="pt" pads to the longest.
        Padding and truncation are switched on in the backend for the call, so don't share one across threads."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if padding not in (False, True, "longest", "max_length"):
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        texts = [_utf8(t) for t in texts]
        if pairs is not None:
            pairs = [_utf8(t) for t in pairs]
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
            texts = list(zip(texts, pairs))
        padding = padding or return_tensors == "pt"
        try:  # the library pads and truncates; switched on for this call only
            if max_length is not None:
                self.backend.enable_truncation(max_length, strategy="longest_first")
            if padding:
                self.backend.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token,
                                            length=max_length if padding == "max_length" else None)
            encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            self.backend.no_truncation()
            self.backend.no_padding()
        batch = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                 "token_type_ids": [e.type_ids for e in encodings]}
        if return_tensors == "pt":
            import torch
            batch = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        return batch

    def tokenize_batch(self, texts):
        """Ids of corpus text, many texts at once (no offsets kept: the fast path). A special token's spelling in
        the text ("[SEP]", "<s>") is read as the characters it is, never as that token, which would put a
        separator or a mask inside a document; a vocabulary piece that spells one (Unigram keeps them among
        its pieces) becomes the unknown token. Switches the backend for the call: don't share it across threads."""
        before, self.backend.encode_special_tokens = self.backend.encode_special_tokens, True
        try:
            encodings = self.backend.encode_batch_fast([_utf8(t) for t in texts], add_special_tokens=False)
        finally:
            self.backend.encode_special_tokens = before
        reserved = set(self.special_ids) - {self.unk_id}
        return [e.ids if reserved.isdisjoint(e.ids) else [self.unk_id if i in reserved else i for i in e.ids]
                for e in encodings]

    def with_special_tokens(self, ids_a, ids_b=None):
        """(input_ids, token_type_ids) for already-tokenized segments, the same template as `encode`."""
        cls, sep = [self.cls_id], [self.sep_id]
        if self.kind == "bpe":  # RoBERTa: <s> A </s> (</s> B </s>), one segment type
            ids = cls + list(ids_a) + sep + ([] if ids_b is None else sep + list(ids_b) + sep)
            return ids, [0] * len(ids)
        ids = cls + list(ids_a) + sep
        types = [0] * len(ids)
        if ids_b is not None:
            ids += list(ids_b) + sep
            types += [1] * (len(ids_b) + 1)
        return ids, types

    def num_special_tokens(self, pair=False):
        return (4 if self.kind == "bpe" else 3) if pair else 2

    def decode(self, ids, skip_special_tokens=True):
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i):
        return self.backend.id_to_token(i)

    def token_to_id(self, t):
        return self.backend.token_to_id(t)

    def _hf_class(self):
        """The family's `transformers` class rebuilds normalizer/pre-tokenizer/decoder from its own recipe, so
        name it only when ours is that recipe; otherwise the generic class, which reads tokenizer.json as is."""
        def parts(normalizer, pre_tokenizer, decoder):
            carrier = Backend(models.BPE())
            carrier.normalizer, carrier.pre_tokenizer, carrier.decoder = normalizer, pre_tokenizer, decoder
            return {k: v for k, v in json.loads(carrier.to_str()).items()
                    if k in ("normalizer", "pre_tokenizer", "decoder")}
        b = self.backend
        recipe = _pipeline(self.kind, self.lowercase and self.kind != "bpe")  # RobertaTokenizer never lowercases
        standard = parts(*recipe) == parts(b.normalizer, b.pre_tokenizer, b.decoder)
        return HF_CLASS[self.kind] if standard else "PreTrainedTokenizerFast"

    def save(self, directory):
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (the Hugging Face layout)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        specials = {f"{role}_token": getattr(self, f"{role}_token") for role in ("pad", "unk", "cls", "sep", "mask")}
        if self.kind != "wordpiece":  # RoBERTa and ALBERT also name bos/eos (= cls/sep)
            specials.update(bos_token=self.cls_token, eos_token=self.sep_token)
        config = {"tokenizer_class": self._hf_class(), "do_lower_case": self.lowercase,
                  "model_max_length": self.model_max_length, **specials}
        if self.kind == "bpe":
            config.update(add_prefix_space=False, trim_offsets=True)
        elif self.kind == "unigram":
            strips = self.backend.normalizer is not None and self.backend.normalizer.normalize_str("é") == "e"
            config.update(keep_accents=not strips, add_prefix_space=True)
        _write_atomic(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        _write_atomic(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        _write_atomic(directory / "special_tokens_map.json", json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
