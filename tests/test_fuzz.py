"""Fuzzed input (hypothesis): arbitrary Unicode through the tokenizers and the whole data pipeline.

Text is drawn from all of Unicode plus the pieces that break text code: emoji (with joiners), combining
marks, right-to-left and bidi controls, control characters and NUL, zero-width and odd whitespace, CR and
CRLF line ends, very long "words", the special tokens' own spellings, and lone surrogates (which a Python
str may hold but UTF-8 cannot: in a file they are written as the invalid bytes they would become, and
the strict reader must name them). Properties: nothing crashes, every id lies in the vocabulary, and the
masking keeps its invariants. The number of examples is in each test's name; the file runs in ~20 s on
2 CPU cores.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import data
import tokenizer as tk

PIECES = ["😀", "👩\u200d👩\u200d👧", "🇫🇷", "e\u0301", "\u0301\u0302", "שָׁלוֹם", "مرحبا", "\u202e", "\u200f", "\u200b",
          "\u00a0", "\u2028", "\u3000", "\ufeff", "\ufffd", "\U0010ffff", "\0", "\x01", "\x1b[31m", "\x7f", "\x1c",
          "\r\n", "\r", "\n", "\n\n", "\n \t\n", " ", "\t", "x" * 300, "ab" * 120, "[CLS]", "[SEP]", "[MASK]",
          "[PAD]", "[UNK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>", "##", "▁", "Ġ", ". ", "! ", "? ", "\"", "A",
          "Hello world. ", "Second sentence here! ", "e.g. ", "3.11 ", "ÜBER naïve café ", "中文字符", "日本語"]
SURROGATES = ["\ud800", "\udfff", "\udc80"]


def texts(surrogates=False, max_pieces=10):
    alphabet = st.characters(exclude_categories=() if surrogates else ("Cs",))
    piece = st.one_of(st.sampled_from(PIECES + (SURROGATES if surrogates else [])),
                      st.text(alphabet, max_size=12))
    return st.lists(piece, max_size=max_pieces).map("".join)


@pytest.fixture(scope="module")
def toks():
    """One small tokenizer per kind, trained once on text with the same kinds of characters."""
    corpus = ["Hello world. Second sentence here! The cat sat on the mat.", "ÜBER naïve café e\u0301 😀 🇫🇷 中文字符",
              "שָׁלוֹם مرحبا 日本語 x.", "Numbers 3.11 and e.g. punctuation ?! \" ' ( ) [ ] < > # _ ."] * 5
    return {kind: tk.train(corpus, kind, vocab_size=300, min_frequency=1) for kind in tk.KINDS}


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----------------------------------------------------------------------------- tokenizer

@settings(max_examples=300, **SETTINGS)
@given(kind=st.sampled_from(tk.KINDS), text=texts(surrogates=True), pair=st.none() | texts(surrogates=True))
def test_tokenizer_takes_any_text_300_examples(toks, kind, text, pair):
    tok = toks[kind]
    ids = tok.encode(text, pair)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    clean = tk._utf8(text)                                  # lone surrogates read as U+FFFD
    assert tok.encode(text, pair) == tok.encode(clean, None if pair is None else tk._utf8(pair))
    segments = tok.tokenize_batch([text] + ([] if pair is None else [pair]))
    assert all(0 <= i < tok.vocab_size for s in segments for i in s)
    # corpus text is text: its tokens are never the template's special tokens, whatever it spells
    assert not {tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id} & {i for s in segments for i in s}
    assert tok.with_special_tokens(*segments)[0][0] == tok.cls_id
    assert isinstance(tok.decode(ids), str)
    if kind == "bpe":                                       # byte-level, no normalizer: an exact round trip
        assert tok.decode(segments[0]) == clean
    batch = tok.encode_batch([text, "short"], None if pair is None else [pair, "x"], padding=True,
                             return_tensors="pt")
    mask = batch["attention_mask"].bool()
    assert torch.equal(mask, torch.arange(mask.shape[1]) < mask.sum(1, keepdim=True))   # padding at the end
    assert (batch["input_ids"][~mask] == tok.pad_id).all()


# ----------------------------------------------------------------------------- masking

@settings(max_examples=300, **SETTINGS)
@given(vocab=st.integers(6, 60), n_special=st.integers(1, 5), p=st.floats(0, 1), mask_ratio=st.floats(0, 1),
       share=st.floats(0, 1), shape=st.tuples(st.integers(1, 6), st.integers(1, 24)), seed=st.integers(0, 2**32))
def test_masker_invariants_300_examples(vocab, n_special, p, mask_ratio, share, shape, seed):
    specials = list(range(n_special))                       # the last special is the mask token
    random_ratio = (1 - mask_ratio) * share
    masker = data.Masker(vocab, n_special - 1, specials, p, mask_ratio, random_ratio)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, shape, generator=g)
    masked, labels = masker(ids, g)
    assert_masking(ids, masked, labels, specials, n_special - 1, vocab)
    if p > 0:                                               # every row with an ordinary token has a target
        has_ordinary = (ids >= n_special).any(1)
        assert ((labels != -100).any(1) | ~has_ordinary).all()


def assert_masking(original, masked, labels, special_ids, mask_id, vocab):
    """The MLM invariants, given the batch before masking."""
    special = torch.isin(original, torch.tensor(special_ids))
    chosen = labels != -100
    assert ((masked >= 0) & (masked < vocab)).all()
    assert torch.equal(labels[chosen], original[chosen])            # labels hold the original ids
    assert not (chosen & special).any()                             # special tokens are never chosen
    assert torch.equal(masked[~chosen], original[~chosen])          # nothing changes where labels are -100
    replaced = chosen & (masked != mask_id) & (masked != original)  # the random share of the 80/10/10
    assert not torch.isin(masked[replaced], torch.tensor(special_ids)).any()


# ----------------------------------------------------------------------------- the data pipeline

def documents():
    """A corpus as files: each a list of documents, each a list of lines."""
    line = texts(surrogates=True, max_pieces=6)
    document = st.lists(line, min_size=1, max_size=4)
    return st.lists(st.lists(document, min_size=1, max_size=4), min_size=1, max_size=2)


def write_files(folder, files, newline, keep_nul):
    """Documents joined by blank lines; lone surrogates become the bytes UTF-8 would give them (invalid).
    NULs (a binary file: refused) are kept in some examples only, so that most reach the batches."""
    paths, texts = [], []
    for i, docs in enumerate(files):
        texts.append((newline * 2).join(newline.join(lines) for lines in docs) + newline)
        texts[-1] = texts[-1] if keep_nul else texts[-1].replace("\0", "")
        paths.append(folder / f"{i}.txt")
        paths[-1].write_bytes(texts[-1].encode("utf-8", "surrogatepass"))
    return paths, texts


def check_batch(batch, clean, tok, masker, objective, seq_len):
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == attention.shape == batch["token_type_ids"].shape
    assert ids.shape[1] == seq_len and attention.dtype == torch.bool
    assert torch.equal(attention, torch.arange(seq_len) < attention.sum(1, keepdim=True))  # real, then padding
    original = clean["input_ids"]
    assert torch.equal(attention, clean["attention_mask"]) and torch.equal(batch["token_type_ids"],
                                                                          clean["token_type_ids"])
    assert ((original >= 0) & (original < tok.vocab_size)).all()
    assert (original[~attention] == tok.pad_id).all() and (labels[~attention] == -100).all()
    assert (batch["token_type_ids"][~attention] == 0).all()
    assert_masking(original, ids, labels, masker.special_ids.tolist(), tok.mask_id, tok.vocab_size)
    assert (original[:, 0] == tok.cls_id).all()
    if objective != "packed mlm":                           # the template's special tokens, and only those
        n_sep = {"mlm": 1}.get(objective, 3 if tok.kind == "bpe" else 2)
        for row, real in zip(original, attention):
            assert row[real][-1] == tok.sep_id and (row[real] == tok.sep_id).sum() == n_sep
            assert (row[real] == tok.cls_id).sum() == 1 and not ((row == tok.mask_id) | (row == tok.pad_id))[real].any()
    else:
        assert attention.all()
    for name in ("next_sentence_label", "sentence_order_label"):
        if name in batch:
            assert set(batch[name].tolist()) <= {0, 1}


@settings(max_examples=200, **SETTINGS)
@given(kind=st.sampled_from(tk.KINDS), files=documents(), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       keep_nul=st.integers(0, 9).map(lambda i: i == 0), seq_len=st.integers(8, 24), seed=st.integers(0, 1000))
def test_pipeline_takes_any_text_200_examples(toks, kind, files, newline, keep_nul, seq_len, seed):
    """files -> resolve_data -> read_documents -> build_cache -> get_batch for mlm, mlm+nsp, mlm+sop and
    packed mlm: a DataError that says why, or batches whose every invariant holds."""
    tok = toks[kind]
    with tempfile.TemporaryDirectory() as tmp:
        paths, written = write_files(Path(tmp), files, newline, keep_nul)
        text = "".join(written)
        errors = "strict"
        # the first file with a NUL (binary, whatever the decoding) or a lone surrogate (invalid UTF-8) is named
        bad = next((p for p, t in zip(paths, written) if "\0" in t or tk._SURROGATE.search(t)), None)
        if bad is not None:
            with pytest.raises(data.DataError, match=r"binary file.*NUL byte at byte offset|"
                                                     r"not utf-8 \(invalid byte 0x.. at byte offset.*replace") as e:
                data.resolve_data([str(p) for p in paths])
            assert str(bad.resolve()) in str(e.value)
        if "\0" in text:
            event("refused: binary")
            return
        if bad is not None:
            errors = "replace"
            event("invalid UTF-8: read again with errors='replace'")
        if not text.strip():
            event("refused: empty")
            with pytest.raises(data.DataError, match="empty"):
                data.resolve_data([str(p) for p in paths], errors=errors)
            return
        resolved = data.resolve_data([str(p) for p in paths], errors=errors)
        docs = list(data.read_documents(resolved, errors=errors))
        for doc in docs:
            assert doc and all(s and s == s.strip() for s in doc)
        decoded = "".join(p.read_bytes().decode("utf-8", errors).removeprefix("\ufeff") for p in paths)  # BOMs
        nonspace = lambda s: "".join(s.split())
        assert nonspace("".join(s for d in docs for s in d)) == nonspace(decoded)   # no text lost but spaces
        if not docs:
            with pytest.raises(data.DataError, match="empty"):
                data.build_cache(resolved, tok, Path(tmp) / "cache", errors=errors)
            return
        train, val = data.build_cache(resolved, tok, Path(tmp) / "cache", val_fraction=0.3, errors=errors)
        cached = [[s.tolist() for s in c.document(i)] for c in (train, val) for i in range(c.n_docs)]
        assert sorted(cached) == sorted(tok.tokenize_batch(d) for d in docs)   # every document, whole, once
        masker = data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids)
        plain = data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids, mlm_probability=0.0)
        for corpus in (train, val):
            if corpus.n_docs == 0:
                continue
            assert ((np.asarray(corpus.tokens) < tok.vocab_size)).all()
            for objective in ("mlm", "mlm+nsp", "mlm+sop", "packed mlm"):
                kw = dict(objective=objective.split()[-1], seq_len=seq_len, batch_size=3, seed=seed,
                          packed=objective == "packed mlm")
                doc_tokens = np.diff(corpus.sent_offsets[corpus.doc_offsets])
                pair = objective in ("mlm+nsp", "mlm+sop")                  # A | B needs 2 tokens of a document
                too_small = corpus.n_tokens == 0 or (pair and doc_tokens.max() < 2) or \
                    (objective == "mlm+nsp" and (doc_tokens > 0).sum() < 2)
                event(f"{objective}: {'too small' if too_small else 'batches'}")
                if too_small:
                    with pytest.raises(data.DataError):
                        data.PretrainingBatches(corpus, tok, masker=masker, **kw)
                    continue
                batches = data.PretrainingBatches(corpus, tok, masker=masker, **kw)
                reference = data.PretrainingBatches(corpus, tok, masker=plain, **kw)
                for step in (0, 1, batches.n_examples):
                    check_batch(batches.get_batch(step), reference.get_batch(step), tok, masker, objective, seq_len)
