"""The pretraining data pipeline: text -> documents/sentences -> token cache -> examples -> masking -> batches.

1. Text. `resolve_data` turns `--data` specs (files, folders of .txt, globs) into a checked file list;
   with none it returns `default_corpus()`: the docstrings of Python's standard library (read with `ast`,
   never imported) and the `pydoc_data` language-reference topics -- text that ships with Python, so
   nothing is downloaded. On CPython 3.11 that is about 1,600 documents, 25,000 sentences, 2.0 MB,
   built in ~3 s on first use and cached under CACHE_DIR/corpus/.
2. Documents and sentences. The text format (`read_documents`): UTF-8, or the `encoding` given, with
   `errors` = strict (an undecodable byte is an error naming the file and offset), replace (it reads as
   U+FFFD) or ignore (it is dropped); a NUL byte means a binary file. Documents are separated by one or
   more blank lines; within a document every non-empty line is split into sentences by SENTENCE_END (after
   . ! or ?, optional closing quotes/brackets, whitespace, then an optional opening quote/bracket and a
   capital letter or digit). A line break always ends a sentence; a file without blank lines is one document.
3. Token cache (`build_cache`). Sentences are tokenized once, in big batches, into flat numpy arrays per
   split: `tokens` (uint16 for vocabularies up to 65,536, else uint32; memory-mapped on reload),
   `sent_offsets` (token offsets of sentence starts, n_sent + 1) and `doc_offsets` (sentence offsets of
   document starts, n_doc + 1). Whole documents go to train or held-out. The cache folder is keyed by the
   files (path, size, mtime, and their decoding when it is not UTF-8/strict), the tokenizer's identity, the
   split and FORMAT_VERSION.
4. Examples (`PretrainingBatches`). Documents are cut once (seeded) into regions of whole sentences, BERT
   style (a sentence longer than a row is split; `short_seq_prob` of regions get a shorter random target).
   mlm/rtd: one region per row. mlm+nsp: a region cut at a random sentence boundary (at a random token if it
   holds one sentence) into A | B; 50% of the time B is replaced by a span of a different document, starting
   at a sentence and no longer than the true B. mlm+sop: A | B in order or swapped, 50/50. Since a region
   fits the row, A + B always fits: no truncation is ever needed. packed (RoBERTa FULL-SENTENCES): fixed
   windows of the corpus read as one stream with a separator after each document, no padding.
5. Masking (`Masker`): BERT's dynamic masking, redrawn at every step; optionally of whole words (`word_start_table`)
   and of n-gram spans (ALBERT), at any rate.
6. Batches. `get_batch(step)` is a pure function of (seed, step, rank): row i of step s on rank r is
   example perm_e[p % N] with p = (s * world_size + r) * batch_size + i, N examples, e = p // N and perm_e
   a permutation seeded by (seed, e); the sentence pairing and the masks are seeded by (seed, s * world_size
   + r). So training walks the corpus epoch by epoch, ranks never share an example, rank r's step s is
   exactly one process's step s * world_size + r (W ranks = W accumulated micro-batches), and resuming at
   step s needs nothing but s. `iterate` prefetches batches in a thread.
"""
import ast
import codecs
import glob
import hashlib
import itertools
import json
import os
import queue
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

CACHE_DIR = Path(os.environ.get("BERT_CACHE", Path(__file__).resolve().parent / ".cache"))
FORMAT_VERSION = 2  # bump when the cache layout, the corpus builder or the tokenization of corpus text changes
OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop", "rtd")
PACKABLE = ("mlm", "rtd")     # the objectives without sentence pairs, whose rows can be packed
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bvs\.)"
                          r"\s+(?=[\"'(\[]?[A-Z0-9])")


class DataError(ValueError):
    """Unusable input data; the message names the path and the fix."""


# ----------------------------------------------------------------------------- 1. text

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled", "lib-dynload"}
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)")


def _paragraphs(text, drop_code=False):
    """Docstring/topic text -> whitespace-normalized paragraphs (blank-line separated blocks), without doctest
    lines (a '>>>' line to the end of its block), rules (=====) and table rows. drop_code also drops indented
    blocks that do not end like a sentence: the code and grammar blocks of the pydoc topics."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = block.splitlines()
        lines = lines[:next((i for i, line in enumerate(lines) if _DOCTEST.match(line)), len(lines))]
        lines = [line for line in lines if any(c.isalnum() for c in line) and not line.lstrip().startswith("| ")]
        if not lines or (drop_code and lines[0][:1].isspace() and not lines[-1].rstrip().endswith((".", "?", "!"))):
            continue
        out.append(" ".join(" ".join(lines).split()))
    return out


def _module_documents(source):
    """Documents of one module: its docstring + its functions', then one per class (class + methods; a class
    with fewer than 20 words of docstrings stays in its parent's document)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old sources
        tree = ast.parse(source)
    docs = [[]]

    def visit(node, doc):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc.extend(_paragraphs(ast.get_docstring(node) or ""))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                docs.append([])
                own = docs[-1]
                visit(child, own)
                if sum(len(p.split()) for p in own) < 20:  # a one-liner class stays with its parent
                    doc.extend(own)
                    own.clear()
            elif isinstance(child, (ast.stmt, ast.excepthandler)):  # no docstrings inside expressions
                visit(child, doc)

    visit(tree, docs[0])
    return [d for d in docs if d]


def default_corpus(cache_dir=CACHE_DIR):
    """The built-in corpus: stdlib docstrings + pydoc topics, written once as a --data text file; returns [path].
    CPython 3.11.7: 1,569 documents, 24,812 sentences, 2.0 MB, ~3 s to build (module docstring, step 1)."""
    version = ".".join(map(str, sys.version_info[:3]))
    path = Path(cache_dir) / "corpus" / f"python-{version}-docs-v{FORMAT_VERSION}.txt"
    if path.is_file():
        return [path]
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            try:
                documents += _module_documents((Path(folder) / name).read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue  # e.g. deliberately broken files; never fatal
    try:
        from pydoc_data.topics import topics  # a module holding one dict of strings, safe to import
    except ImportError:
        topics = {}
    documents += [_paragraphs(topics[k], drop_code=True) for k in sorted(topics)]
    documents = [d for d in documents if d]
    if not documents:
        raise DataError(f"found no Python sources under {root} to build the default corpus: pass --data FILES")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".corpus-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(d) for d in documents) + "\n")
    os.replace(tmp, path)
    return [path]


ENCODING_ERRORS = ("strict", "replace", "ignore")


def _decoding(encoding, errors):
    """(codec name, errors) checked: a DataError for an unknown encoding or errors mode."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise DataError(f"unknown text encoding {encoding!r}: use a Python codec name such as utf-8, latin-1, "
                        f"cp1252 or utf-16") from None
    if errors not in ENCODING_ERRORS:
        raise DataError(f"encoding errors={errors!r}: expected one of {', '.join(ENCODING_ERRORS)}")
    return name, errors


def _check_text_file(path, encoding="utf-8", errors="strict", chunk_size=1 << 24):
    """True if the file holds non-whitespace text; DataError naming the byte offset if it is binary (a NUL byte,
    checked in encodings where NUL is one byte) or does not decode."""
    encoding, errors = _decoding(encoding, errors)
    decoder, offset, has_text = codecs.getincrementaldecoder(encoding)(errors), 0, False
    nul_is_a_byte = codecs.decode(b"\0", encoding, "replace") == "\0"  # not in UTF-16/32
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            nul = chunk.find(b"\0") if nul_is_a_byte else -1
            if nul >= 0:
                raise DataError(f"{path}: a binary file, not text (NUL byte at byte offset {offset + nul}); "
                                f"--data takes text files")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not {encoding} (invalid byte 0x{e.object[e.start]:02x} at byte offset "
                                f"{offset - pending + e.start}); name its encoding (e.g. --encoding latin-1), read "
                                f"bad bytes as U+FFFD (--encoding-errors replace), or convert it "
                                f"(iconv -f latin1 -t utf-8)") from None
            has_text = has_text or bool(text.strip())
            offset += len(chunk)
            if not chunk:
                return has_text


def resolve_data(specs, cache_dir=CACHE_DIR, encoding="utf-8", errors="strict"):
    """--data specs (files, folders searched for *.txt, globs) -> checked, de-duplicated list of files, each
    decoded with `encoding` and `errors` (strict | replace | ignore) as read_documents will read it."""
    if _decoding(encoding, errors) != ("utf-8", "strict") and not specs:
        raise DataError(f"encoding={encoding!r}, errors={errors!r} are for --data files; the built-in corpus is "
                        f"UTF-8: leave them at their defaults without --data")
    if not specs:
        return default_corpus(cache_dir)
    files = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.txt") if q.is_file())
            if not found:
                raise DataError(f"{p}: folder holds no .txt files (searched recursively); "
                                f"name the files directly or give them a .txt suffix")
        elif p.is_file():
            found = [p]
        else:
            matches = sorted(glob.glob(str(p), recursive=True))
            found = [Path(m) for m in matches if os.path.isfile(m)]
            found += [q for m in matches if os.path.isdir(m) for q in sorted(Path(m).rglob("*.txt")) if q.is_file()]
            if not found:
                raise DataError(f"--data {spec!r}: no such file or folder, and no file matches it as a glob; "
                                f"pass a .txt file, a folder of .txt files or a quoted glob like 'data/*.txt'")
        files += found
    files = list(dict.fromkeys(f.resolve() for f in files))
    if not any([_check_text_file(f, encoding, errors) for f in files]):  # a list: check every file
        raise DataError(f"the corpus is empty: {', '.join(map(str, files[:5]))}{' ...' if len(files) > 5 else ''} "
                        f"hold no text; put documents in them, separated by blank lines")
    return files


# ----------------------------------------------------------------------------- 2. documents and sentences

def split_sentences(line):
    return [s for s in (s.strip() for s in SENTENCE_END.split(line)) if s]


def read_documents(files, encoding="utf-8", errors="strict"):
    """Yield each document as a list of sentences (format: see the module docstring, step 2)."""
    encoding, errors = _decoding(encoding, errors)
    for file in files:
        doc = []
        with open(file, encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors=errors) as f:
            try:
                for line in f:
                    if line.strip():
                        doc += split_sentences(line)
                    elif doc:
                        yield doc
                        doc = []
            except UnicodeDecodeError:
                _check_text_file(file, encoding, errors)  # raises the DataError that names the byte offset
                raise
        if doc:
            yield doc


# ----------------------------------------------------------------------------- 3. token cache

class TokenCorpus:
    """One split of the token cache: flat tokens, sentence starts into tokens, document starts into sentences."""

    def __init__(self, tokens, sent_offsets, doc_offsets, folder=None):
        self.tokens, self.sent_offsets, self.doc_offsets, self.folder = tokens, sent_offsets, doc_offsets, folder

    @classmethod
    def load(cls, folder):
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        n, dtype = meta["n_tokens"], np.dtype(meta["dtype"])
        tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return cls(tokens, np.load(folder / "sent_offsets.npy"), np.load(folder / "doc_offsets.npy"), folder)

    n_docs = property(lambda self: len(self.doc_offsets) - 1)
    n_sentences = property(lambda self: len(self.sent_offsets) - 1)
    n_tokens = property(lambda self: len(self.tokens))

    def doc_token_range(self, i):
        so, do = self.sent_offsets, self.doc_offsets
        return int(so[do[i]]), int(so[do[i + 1]])

    def document(self, i):
        s = self.sent_offsets[self.doc_offsets[i]:self.doc_offsets[i + 1] + 1]
        return [np.asarray(self.tokens[a:b]) for a, b in zip(s[:-1], s[1:])]

    def __repr__(self):
        return f"TokenCorpus({self.n_docs} documents, {self.n_sentences} sentences, {self.n_tokens} tokens)"


class _SplitWriter:
    def __init__(self, folder, dtype):
        self.folder, self.dtype = Path(folder), dtype
        self.folder.mkdir(parents=True)
        self.f = open(self.folder / "tokens.bin", "wb")
        self.sent_lens, self.doc_sents, self.n_tokens = [], [], 0

    def add(self, sentences):  # one document: a list of token-id lists
        lens = np.fromiter(map(len, sentences), np.int64, len(sentences))
        flat = np.fromiter(itertools.chain.from_iterable(sentences), self.dtype, int(lens.sum()))
        flat.tofile(self.f)
        self.sent_lens.append(lens)
        self.doc_sents.append(len(sentences))
        self.n_tokens += len(flat)

    def close(self):
        self.f.close()
        lens = np.concatenate(self.sent_lens) if self.sent_lens else np.zeros(0, np.int64)
        np.save(self.folder / "sent_offsets.npy", np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
        np.save(self.folder / "doc_offsets.npy", np.concatenate([[0], np.cumsum(self.doc_sents)]).astype(np.int64))
        meta = {"n_tokens": self.n_tokens, "dtype": np.dtype(self.dtype).name}
        (self.folder / "meta.json").write_text(json.dumps(meta))


def tokenizer_identity(tok):
    return hashlib.sha256(tok.backend.to_str().encode()).hexdigest()


def files_fingerprint(files, encoding="utf-8", errors="strict"):
    """(resolved path, size, mtime) of each file, and how they are decoded when that is not UTF-8/strict (so
    the keys of UTF-8 caches stay as they were): what every cache built from a corpus is keyed by."""
    fingerprint = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    decoding = _decoding(encoding, errors)
    return fingerprint if decoding == ("utf-8", "strict") else fingerprint + [decoding]


def cache_key(files, tok, val_fraction, seed, encoding="utf-8", errors="strict"):
    blob = json.dumps([FORMAT_VERSION, files_fingerprint(files, encoding, errors), tokenizer_identity(tok),
                       val_fraction, seed])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def build_cache(files, tok, cache_dir=CACHE_DIR, val_fraction=0.05, seed=0, chunk_sentences=20000,
                encoding="utf-8", errors="strict"):
    """Tokenize `files` (read with `encoding`, `errors`: see read_documents) once into
    CACHE_DIR/tokens/<key>/{train,val}; reuse that folder when it exists.
    Returns (train, val) TokenCorpus. The held-out split is round(val_fraction * n_docs) whole documents chosen
    by `seed`; when val_fraction > 0 at least 1 of 2-3 documents and at least 2 of 4 or more (leaving as many)."""
    folder = Path(cache_dir) / "tokens" / cache_key(files, tok, val_fraction, seed, encoding, errors)
    if not (folder / "train" / "meta.json").is_file():
        n_docs = sum(1 for _ in read_documents(files, encoding, errors))
        if n_docs == 0:
            raise DataError(f"the corpus is empty: {[str(f) for f in files][:5]} hold no documents")
        floor = 1 if n_docs < 4 else 2  # 2 held-out documents let mlm+nsp draw NotNext pairs there too
        n_val = 0 if n_docs < 2 or val_fraction <= 0 else min(max(floor, round(val_fraction * n_docs)), n_docs - floor)
        is_val = np.zeros(n_docs, bool)
        is_val[np.random.default_rng(seed).choice(n_docs, n_val, replace=False)] = True
        dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".build-"))
        try:
            writers = [_SplitWriter(tmp / "train", dtype), _SplitWriter(tmp / "val", dtype)]
            docs = []

            def flush():
                ids = iter(tok.tokenize_batch([s for d in docs for s in d[1]]))
                for index, sentences in docs:
                    writers[int(is_val[index])].add([next(ids) for _ in sentences])
                docs.clear()

            pending = 0
            for index, doc in enumerate(read_documents(files, encoding, errors)):
                docs.append((index, doc))
                pending += len(doc)
                if pending >= chunk_sentences:
                    flush()
                    pending = 0
            flush()
            for w in writers:
                w.close()
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same cache first: use theirs
                if not (folder / "train" / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenCorpus.load(folder / "train"), TokenCorpus.load(folder / "val")


# ----------------------------------------------------------------------------- 5. masking

# the characters byte-level BPE's pre-tokenizer splits at (its regex's \s: Unicode White_Space, which is Python's
# str.isspace less the separators U+001C-U+001F; all of them lie below U+3001)
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and c not in "\x1c\x1d\x1e\x1f")


def word_start_table(tok):
    """(vocab_size,) bool tensor, computed once from the vocabulary: does token i begin a word?
    wordpiece: a piece that continues a word starts with '##' (the model's continuing_subword_prefix).
    bpe (byte-level): the whitespace before a word begins its first token ('Ġ' for a space, 'ĉ' for a tab, 'Âł' for
    a no-break space: any Unicode whitespace, as the pre-tokenizer's), so 'Ġ' + 'world' is one word, and so
    are 'ĉ' + 'here' (whitespace the pre-tokenizer keeps apart goes with the word after it, as 'Ġ' does); a
    multi-byte space that the vocabulary splits into pieces of its bytes is not seen. A sentence's first
    word has no whitespace before it (the cache tokenizes sentences one by one): PretrainingBatches tells
    the Masker where sentences begin. unigram (Metaspace, as SentencePiece): a word's
    first piece starts with '▁'. Punctuation stays with its word in bpe and unigram ('world,') and is a word of
    its own in wordpiece, whose pre-tokenizer splits it off, as BERT's word definition. Special and added
    tokens are True (the Masker never masks specials; a token after one begins a word whatever it is).
    A tokenizer that marks no word boundaries this way is a ValueError."""
    spec = json.loads(tok.backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers") or [pre]
    if tok.kind == "wordpiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        starts = lambda t: not t.startswith(prefix)
    elif tok.kind == "bpe":
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or \
                not any(p.get("type") == "ByteLevel" for p in pres):
            raise ValueError("this BPE tokenizer is not byte-level (no ByteLevel pre-tokenizer, or it marks words with "
                             "a prefix/suffix), so its tokens do not tell where words start; whole-word masking "
                             "needs a byte-level BPE (tokenizer.py's bpe kind), a WordPiece or a Unigram tokenizer")
        from tokenizers import pre_tokenizers
        to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # str -> byte-level spelling
        spaces = tuple(to_bytes.pre_tokenize_str(c)[0][0] for c in _WHITESPACE)
        starts = lambda t: t.startswith(spaces)
    else:
        marker = next((p.get("replacement") for p in pres if p.get("type") == "Metaspace"), None)
        if not marker:
            raise ValueError("this Unigram tokenizer has no Metaspace pre-tokenizer, so its pieces carry no '▁' "
                             "word marker; whole-word masking needs a Unigram tokenizer like tokenizer.py's "
                             "(SentencePiece's layout), a WordPiece or a byte-level BPE tokenizer")
        starts = lambda t: t.startswith(marker)
    table = torch.ones(tok.vocab_size, dtype=torch.bool)
    added = set(tok.backend.get_added_tokens_decoder())
    for token, i in tok.backend.get_vocab(with_added_tokens=True).items():
        if i < len(table) and i not in added:
            table[i] = starts(token)
    return table


class Masker:
    """BERT's MLM masking: each ordinary token is chosen with probability `mlm_probability`; a chosen token
    becomes mask_id (`mask_ratio`), a random non-special token (`random_ratio`) or stays as it is (the rest).
    labels hold the original id at chosen positions and -100 elsewhere. Special tokens (padding included)
    are never chosen. A row with no chosen token but some ordinary ones gets one chosen at random, so that
    every row has a target (this raises the rate slightly for very short rows only).

    Whole-word and n-gram masking (`word_starts`, `max_ngram`; `spans` says how the tokens are grouped): the
    units are whole words where `word_starts` (`word_start_table(tok)`) says they begin, else single tokens;
    each stretch of units between special tokens is cut into spans of n consecutive units, n in 1..max_ngram
    drawn with p(n) proportional to 1/n (ALBERT's n-gram masking, max_ngram 3 in its paper; 1: every unit
    is a span), and each span is chosen whole with probability mlm_probability. So every ordinary token is
    still chosen with that probability, a word is chosen all or not at all, and a span never crosses a
    special token. The released BERT whole-word and ALBERT code draw the 80/10/10 split for each token of a
    chosen word or n-gram, and so does this by default; per_span=True draws it once per span (SpanBERT's
    way), so a span is all [MASK], all random or all kept. The default options (word_starts=None,
    max_ngram=1) run BERT's token masking, unchanged."""

    def __init__(self, vocab_size, mask_id, special_ids, mlm_probability=0.15, mask_ratio=0.8, random_ratio=0.1,
                 word_starts=None, max_ngram=1, per_span=False):
        for name, value in (("mlm_probability", mlm_probability), ("mask_ratio", mask_ratio),
                            ("random_ratio", random_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1]")
        if mask_ratio + random_ratio > 1.0 + 1e-9:
            raise ValueError(f"mask_ratio + random_ratio = {mask_ratio} + {random_ratio} > 1: "
                             f"they are shares of the chosen tokens")
        if not (isinstance(max_ngram, int) and max_ngram >= 1):
            raise ValueError(f"max_ngram={max_ngram!r} must be an integer >= 1 (1 = single words or tokens)")
        if word_starts is not None and (word_starts.dtype != torch.bool or tuple(word_starts.shape) != (vocab_size,)):
            raise ValueError(f"word_starts must be a bool tensor of shape ({vocab_size},) (word_start_table(tok)), "
                             f"got {word_starts.dtype} {tuple(word_starts.shape)}")
        self.word_starts, self.max_ngram, self.per_span = word_starts, max_ngram, per_span
        p_n = 1.0 / torch.arange(1, max_ngram + 1, dtype=torch.float64)
        self._ngram_cdf = (p_n.cumsum(0) / p_n.sum())[:-1].float()   # bucketize a uniform draw -> n - 1
        self.mask_id, self.p, self.mask_ratio, self.random_ratio = mask_id, mlm_probability, mask_ratio, random_ratio
        self.special_ids = torch.tensor(sorted(set(special_ids) | {mask_id}), dtype=torch.long)
        ordinary = torch.ones(vocab_size, dtype=torch.bool)
        ordinary[self.special_ids[self.special_ids < vocab_size]] = False
        self.replacements = ordinary.nonzero().squeeze(1)  # the ids a random replacement may take
        if len(self.replacements) == 0:
            raise ValueError(f"vocab_size={vocab_size} leaves no ordinary token to predict")

    def __call__(self, input_ids, rng, starts=None):
        """(masked input_ids, labels). starts: optional (B, T) bool, positions known to begin a word whatever
        their token (PretrainingBatches passes sentence starts: byte-level BPE writes a sentence's first word
        without its 'Ġ' when sentences are tokenized one by one); used with word_starts only."""
        if self.word_starts is not None or self.max_ngram > 1:
            return self._mask_spans(input_ids, rng, starts)
        shape = input_ids.shape
        maskable = ~torch.isin(input_ids, self.special_ids)                              # (B, T)
        chosen = (torch.rand(shape, generator=rng) < self.p) & maskable                  # (B, T)
        starved = maskable.any(1) & ~chosen.any(1)                                       # (B,)
        if self.p > 0 and starved.any():
            pick = torch.rand(shape, generator=rng).masked_fill(~maskable, -1.0).argmax(1)        # (B,)
            chosen[starved, pick[starved]] = True
        labels = torch.where(chosen, input_ids, -100)
        u = torch.rand(shape, generator=rng)
        to_mask = chosen & (u < self.mask_ratio)
        to_random = chosen & (u >= self.mask_ratio) & (u < self.mask_ratio + self.random_ratio)
        random_ids = self.replacements[torch.randint(len(self.replacements), shape, generator=rng)]
        masked = torch.where(to_random, random_ids, input_ids)
        return masked.masked_fill(to_mask, self.mask_id), labels

    def spans(self, input_ids, rng, starts=None):
        """(span, maskable), both (B, T): span numbers the spans of each row 0, 1, ... left to right at their
        tokens (-1 at special ones), maskable = not special. The n-gram lengths are drawn from `rng`."""
        B, T = input_ids.shape
        maskable = ~torch.isin(input_ids, self.special_ids)                              # (B, T)
        stretch = maskable.clone()                                                       # (B, T) begins a stretch:
        stretch[:, 1:] &= ~maskable[:, :-1]                                              # after a special token
        unit = stretch | (maskable if self.word_starts is None else maskable & self.word_starts[input_ids])
        if starts is not None and self.word_starts is not None:
            unit |= starts & maskable                                                    # (B, T) a unit begins here
        uid = unit.cumsum(1) - 1                                                         # (B, T) each token's unit
        if self.max_ngram == 1:
            return torch.where(maskable, uid, -1), maskable
        # n-grams: the units u = 0, 1, ... of a row (slots of size T) are tiled, stretch by stretch, by spans of
        # n_u units: the k-th span of a stretch whose first unit is h begins at h + n_h + ... + n_(h+k-1), a
        # prefix sum restarted at every stretch; a span that would begin past its stretch does not exist
        j = torch.arange(T)
        first = torch.zeros(B, T + 1, dtype=torch.bool)
        first = first.scatter_(1, torch.where(stretch, uid, T), True)[:, :T]             # (B, U) unit begins a stretch
        stretch_of = first.cumsum(1)                                                     # (B, U)
        head = torch.where(first, j, 0).cummax(1).values                                 # (B, U) its stretch's 1st
        n = torch.bucketize(torch.rand(B, T, generator=rng), self._ngram_cdf) + 1        # (B, U) in 1..max_ngram
        before = n.cumsum(1) - n                                                         # (B, U)
        begin = head + before - before.gather(1, head)                                   # (B, U) k = u - head
        inside = (begin < unit.sum(1, keepdim=True)) & (stretch_of.gather(1, begin.clamp(max=T - 1)) == stretch_of)
        span_start = torch.zeros(B, T + 1, dtype=torch.bool)
        span_start = span_start.scatter_(1, torch.where(inside, begin, T), True)[:, :T]  # (B, U) a span begins at unit
        span = (span_start.cumsum(1) - 1).gather(1, uid.clamp(min=0))                    # (B, T)
        return torch.where(maskable, span, -1), maskable

    def _mask_spans(self, input_ids, rng, starts=None):
        """Whole-word / n-gram masking (class docstring): each span chosen whole with probability p."""
        shape = input_ids.shape
        span, maskable = self.spans(input_ids, rng, starts)                              # (B, T) each
        slot = span.clamp(min=0)                                                         # (B, T) index of a span
        chosen = (torch.rand(shape, generator=rng) < self.p).gather(1, slot) & maskable        # (B, T)
        starved = maskable.any(1) & ~chosen.any(1)                                       # (B,)
        if self.p > 0 and starved.any():                                                 # one span at random
            n_spans = span.amax(1) + 1                                                   # (B,)
            pick = torch.minimum((torch.rand(shape[0], generator=rng) * n_spans).long(), n_spans - 1)
            chosen |= starved[:, None] & (span == pick[:, None])
        labels = torch.where(chosen, input_ids, -100)
        u = torch.rand(shape, generator=rng)
        if self.per_span:
            u = u.gather(1, slot)                                                        # one draw per span
        to_mask = chosen & (u < self.mask_ratio)
        to_random = chosen & (u >= self.mask_ratio) & (u < self.mask_ratio + self.random_ratio)
        random_ids = self.replacements[torch.randint(len(self.replacements), shape, generator=rng)]
        masked = torch.where(to_random, random_ids, input_ids)
        return masked.masked_fill(to_mask, self.mask_id), labels


# ----------------------------------------------------------------------------- 4. examples, 6. batches

def _regions(corpus, max_tokens, short_seq_prob, seed, min_tokens):
    """Cut every document into regions of whole sentences of at most `target` tokens, where target is
    max_tokens, or with probability short_seq_prob a random length in [2, max_tokens] (as BERT). A sentence
    longer than target is cut into pieces. Returns (doc, start, end) int64 arrays into corpus.tokens."""
    rng, out = random.Random(seed), []
    draw = lambda: rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    so, do = corpus.sent_offsets, corpus.doc_offsets
    for d in range(corpus.n_docs):
        bounds = so[do[d]:do[d + 1] + 1].tolist()
        start = end = bounds[0]
        target = draw()
        for b in bounds[1:]:                    # the next sentence is tokens [end, b)
            if b - start > target and end > start:
                out.append((d, start, end))
                start, target = end, draw()
            while b - start > target:           # a sentence longer than the target: cut it
                out.append((d, start, start + target))
                start, target = start + target, draw()
            end = b
        if end > start:
            out.append((d, start, end))
    r = np.array(out, dtype=np.int64).reshape(-1, 3)
    r = r[r[:, 2] - r[:, 1] >= min_tokens]
    return r[:, 0], r[:, 1], r[:, 2]


def _seed(*parts):
    return int(np.random.SeedSequence([p % (1 << 63) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class PretrainingBatches:
    """Batches of one objective over a TokenCorpus; `get_batch(step)` depends only on (seed, step, rank).
    Keys: input_ids, attention_mask (bool, True = real token), token_type_ids, labels (-100 = not predicted),
    and next_sentence_label (0 = IsNext, 1 = NotNext) or sentence_order_label (0 = in order, 1 = swapped).

    packed=True (mlm, rtd): rows are windows of the whole corpus read as one stream, a separator after each
    document, no padding (RoBERTa's FULL-SENTENCES). separate_documents=True adds `document_ids` (B, T):
    the documents in a row numbered 0, 1, ... (a document's separator is its own), which the models use
    for block-diagonal attention and restarting positions, so no document sees another.

    With a whole-word Masker (word_starts set), the masker is also told where the corpus's sentences begin:
    each sentence is tokenized alone, so byte-level BPE writes its first word without the 'Ġ' that marks one."""

    def __init__(self, corpus, tok, objective, seq_len, batch_size, masker, seed=0, packed=False,
                 short_seq_prob=0.1, rank=0, world_size=1, separate_documents=False):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}: expected one of {OBJECTIVES}")
        if packed and objective not in PACKABLE:
            raise ValueError(f"packed=True is for mlm/rtd; {objective} needs sentence pairs")
        if separate_documents and not packed:
            raise ValueError("separate_documents=True numbers the documents of packed rows: pass packed=True too")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.pair = objective in ("mlm+nsp", "mlm+sop")
        self.max_tokens = seq_len - tok.num_special_tokens(pair=self.pair)
        if self.max_tokens < 2 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len}, batch_size={batch_size}: too small for {objective}")
        self.corpus, self.objective, self.masker, self.seed, self.packed = corpus, objective, masker, seed, packed
        self.separate_documents = separate_documents
        self._words = getattr(masker, "word_starts", None) is not None  # whole-word masking: pass sentence starts
        self.seq_len, self.batch_size, self.rank, self.world_size = seq_len, batch_size, rank, world_size
        self.pad_id = tok.pad_id
        # the special-token template, read off the tokenizer with two ordinary sentinel ids
        special = set(tok.special_ids)
        x, y = [i for i in range(len(special) + 2) if i not in special][:2]
        ids, types = tok.with_special_tokens([x], [y] if self.pair else None)
        ia = ids.index(x)
        ib = ids.index(y) if self.pair else ia  # single sequence: no middle part
        self._parts = [(np.array(ids[s:e], np.int64), np.array(types[s:e], np.int64))
                       for s, e in ((0, ia), (ia + 1, ib), (ib + 1, len(ids)))]
        self._type_a, self._type_b = types[ia], (types[ib] if self.pair else 0)
        if packed:  # the corpus as one stream, a separator after each document, read in windows (cyclically)
            doc_tok = corpus.sent_offsets[corpus.doc_offsets]                      # (n_doc + 1,)
            self._stream_starts = doc_tok[:-1] + np.arange(corpus.n_docs)
            self._stream_len = corpus.n_tokens + corpus.n_docs
            self._doc_tok, self._sep = doc_tok, tok.sep_id
            self.n_examples = -(-self._stream_len // self.max_tokens)
        else:
            self._doc, self._start, self._end = _regions(corpus, self.max_tokens, short_seq_prob, seed,
                                                         min_tokens=2 if self.pair else 1)
            self.n_examples = len(self._doc)
            doc_len = np.diff(corpus.sent_offsets[corpus.doc_offsets])
            self._other_docs = np.flatnonzero(doc_len > 0)  # where NotNext B segments come from
            if objective == "mlm+nsp" and len(self._other_docs) < 2:
                raise DataError("mlm+nsp needs at least 2 non-empty documents (blank-line separated) in the corpus")
        if self.n_examples == 0 or corpus.n_tokens == 0:
            raise DataError(f"no {objective} examples in {corpus}: the corpus is empty or too short")
        self._perms = {}

    @property
    def tokens_per_batch(self):
        return self.batch_size * self.seq_len

    def epoch(self, step):
        return (step * self.world_size + self.rank) * self.batch_size // self.n_examples

    def _permutation(self, epoch):
        perm = self._perms.get(epoch)
        if perm is None:  # keep the last few; the dict is replaced, never mutated, as the prefetch thread reads it
            perm = np.random.default_rng(_seed(self.seed, epoch, 0)).permutation(self.n_examples)
            self._perms = {**dict(list(self._perms.items())[-2:]), epoch: perm}
        return perm

    def example_ids(self, step):
        p = (step * self.world_size + self.rank) * self.batch_size + np.arange(self.batch_size)
        epochs = p // self.n_examples
        return np.concatenate([self._permutation(int(e))[p[epochs == e] % self.n_examples] for e in np.unique(epochs)])

    def _packed_rows(self, ex):
        q = (ex[:, None] * self.max_tokens + np.arange(self.max_tokens)) % self._stream_len   # (B, W) stream positions
        doc = np.searchsorted(self._stream_starts, q, side="right") - 1                    # (B, W)
        pos = self._doc_tok[doc] + q - self._stream_starts[doc]                            # (B, W) index into tokens
        is_sep = pos >= self._doc_tok[doc + 1]
        body = np.where(is_sep, self._sep, self.corpus.tokens[np.minimum(pos, self.corpus.n_tokens - 1)])
        (pre, _), _, (post, _) = self._parts
        B = len(ex)
        ids = np.concatenate([np.broadcast_to(pre, (B, len(pre))), body, np.broadcast_to(post, (B, len(post)))], 1)
        src = None  # with whole-word masking: each token's position in corpus.tokens (-1: template, separator)
        if self._words:
            src = np.pad(np.where(is_sep, -1, pos), ((0, 0), (len(pre), len(post))), constant_values=-1)
        if not self.separate_documents:
            return ids, np.zeros_like(ids), np.full(B, ids.shape[1]), None, src
        # a new document after each separator (also where the stream wraps round); the template's
        # leading tokens belong to the first document of the row, its trailing ones to the last
        after_sep = np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(is_sep, 1)[:, :-1]], 1)   # (B, W)
        doc_ids = np.concatenate([np.zeros((B, len(pre)), np.int64), after_sep,
                                  np.broadcast_to(after_sep[:, -1:], (B, len(post)))], 1)
        return ids, np.zeros_like(ids), np.full(B, ids.shape[1]), doc_ids, src

    def _pair(self, e, rng):
        """(a0, a1, b0, b1, label): the two segments of example e as token ranges, and the NSP/SOP label."""
        so = self.corpus.sent_offsets
        d, t0, t1 = self._doc[e], self._start[e], self._end[e]
        inner = so[np.searchsorted(so, t0, "right"):np.searchsorted(so, t1, "left")]  # sentence starts in (t0, t1)
        cut = int(inner[rng.integers(len(inner))]) if len(inner) else int(rng.integers(t0 + 1, t1))
        a0, a1, b0, b1 = t0, cut, cut, t1
        label = int(rng.random() < 0.5)
        if label and self.objective == "mlm+nsp":  # NotNext: B from a random other document
            other = d
            while other == d:
                other = self._other_docs[rng.integers(len(self._other_docs))]
            lo, hi = self.corpus.doc_token_range(other)
            starts = so[self.corpus.doc_offsets[other]:self.corpus.doc_offsets[other + 1]]
            b0 = int(rng.choice(starts[starts < hi]))
            b1 = min(hi, b0 + (t1 - cut))  # at most as long as the true continuation: A + B still fits
        return (b0, b1, a0, a1, label) if label and self.objective == "mlm+sop" else (a0, a1, b0, b1, label)

    def get_batch(self, step):
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        ex = self.example_ids(step)
        g = step * self.world_size + self.rank   # the global batch index: rank r's step s is 1 process's s*W + r
        rng = np.random.default_rng(_seed(self.seed, g, 0, 1))
        extra = {}
        if self.packed:
            ids, types, lengths, doc_ids, src = self._packed_rows(ex)
            if self.separate_documents:
                extra["document_ids"] = torch.from_numpy(doc_ids)
        else:
            B, T = len(ex), self.seq_len
            ids, types = np.full((B, T), self.pad_id, np.int64), np.zeros((B, T), np.int64)
            lengths, labels = np.zeros(B, np.int64), np.zeros(B, np.int64)
            toks, src = self.corpus.tokens, np.full((B, T), -1, np.int64) if self._words else None
            for i, e in enumerate(ex):
                if self.pair:
                    a0, a1, b0, b1, labels[i] = self._pair(e, rng)
                    pieces = [self._parts[0], (toks[a0:a1], self._type_a), self._parts[1], (toks[b0:b1], self._type_b),
                              self._parts[2]]
                    origins = (None, a0, None, b0, None)
                else:
                    pieces = [self._parts[0], (toks[self._start[e]:self._end[e]], self._type_a), self._parts[2]]
                    origins = (None, self._start[e], None)
                n = 0
                for (tokens, type_ids), origin in zip(pieces, origins):
                    ids[i, n:n + len(tokens)], types[i, n:n + len(tokens)] = tokens, type_ids
                    if self._words and origin is not None:
                        src[i, n:n + len(tokens)] = np.arange(origin, origin + len(tokens))
                    n += len(tokens)
                lengths[i] = n
            if self.pair:
                name = "next_sentence_label" if self.objective == "mlm+nsp" else "sentence_order_label"
                extra[name] = torch.from_numpy(labels)
        input_ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        attention_mask = torch.arange(input_ids.shape[1]) < torch.from_numpy(lengths)[:, None]
        masking = torch.Generator().manual_seed(_seed(self.seed, g, 0, 2))
        if self._words:
            masked, mlm_labels = self.masker(input_ids, masking, starts=self._sentence_starts(src))
        else:
            masked, mlm_labels = self.masker(input_ids, masking)
        return {"input_ids": masked, "attention_mask": attention_mask,
                "token_type_ids": torch.from_numpy(np.ascontiguousarray(types, dtype=np.int64)),
                "labels": mlm_labels, **extra}

    def _sentence_starts(self, src):
        """(B, T) bool tensor: the tokens that begin a sentence of the corpus, from their corpus positions."""
        so = self.corpus.sent_offsets
        at = so[np.minimum(np.searchsorted(so, src), len(so) - 1)]
        return torch.from_numpy((src >= 0) & (at == src))

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start_step=0, prefetch=4):
        """Yield get_batch(start_step), get_batch(start_step + 1), ... computed ahead in a daemon thread
        (pinned memory when CUDA is available). Closing the generator (or breaking out of a for loop over
        it) stops the thread; an error in the thread is raised here."""
        q, stop, pin = queue.Queue(maxsize=prefetch), threading.Event(), torch.cuda.is_available()

        def put(item):
            while not stop.is_set():
                try:
                    return q.put(item, timeout=0.1)
                except queue.Full:
                    pass

        def produce():
            step = start_step
            try:
                while not stop.is_set():
                    batch = self.get_batch(step)
                    put({k: v.pin_memory() for k, v in batch.items()} if pin else batch)
                    step += 1
            except BaseException as e:  # handed to the consumer
                put(e)

        thread = threading.Thread(target=produce, name="PretrainingBatches", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=10)


# ----------------------------------------------------------------------------- the pipeline in two calls

def corpus_tokenizer(files, kind, vocab_size, encoding="utf-8", errors="strict", cache_dir=None):
    """A `kind` tokenizer of `vocab_size` tokens trained on `files`, cached under cache_dir/tokenizers (default
    CACHE_DIR) by the files' fingerprint, the kind and the size: trained once per corpus, then loaded."""
    import tokenizer as tokenizers_lib
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    fingerprint = files_fingerprint(files, encoding=encoding, errors=errors)
    corpus = hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()[:12]
    cached = Path(cache_dir) / "tokenizers" / f"{kind}-{vocab_size}-{corpus}"
    if (cached / "tokenizer.json").exists():
        return tokenizers_lib.load(cached)
    print(f"training a {kind} tokenizer ({vocab_size} tokens) on {len(files)} file(s) ...", flush=True)
    tok = tokenizers_lib.train([str(f) for f in files], kind=kind, vocab_size=vocab_size,
                               encoding=encoding, errors=errors)
    tok.save(cached)
    return tok


def pretraining_batches(corpus, tok, objective, seq_len, batch_size, seed, masking, word_starts=None, max_ngram=1,
                        packed=False, separate_documents=False, rank=0, world_size=1):
    """PretrainingBatches of `objective` over `corpus`, masked by a Masker with `masking` (its rate and split:
    mlm_probability, mask_ratio, random_ratio), whole words where `word_starts` (word_start_table) is given
    and n-gram spans up to max_ngram. packed: rows of contiguous sentences (mlm and rtd only), documents
    apart when separate_documents. What train.py builds, and bench.py --data times."""
    masker = Masker(tok.vocab_size, tok.mask_id, tok.special_ids, **masking, word_starts=word_starts,
                    max_ngram=max_ngram)
    return PretrainingBatches(corpus, tok=tok, objective=objective, seq_len=seq_len, batch_size=batch_size,
                              masker=masker, seed=seed, packed=packed and objective in PACKABLE,
                              separate_documents=separate_documents, rank=rank, world_size=world_size)
