"""Tests for data.py: corpus resolution, the text format, the token cache, masking and the pretraining batches.

The synthetic corpus gives every document its own words, each a single token of the small tokenizer
trained on it, so a token tells which document it came from.
"""
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

import data
import tokenizer

N_DOCS, WORDS_PER_DOC = 20, 6


def _make_corpus(seed=0):
    """N_DOCS documents of 6-12 sentences; document d only uses its own WORDS_PER_DOC pseudo-words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = []
    while len(words) < N_DOCS * WORDS_PER_DOC:
        w = "".join(rng.choice(letters, 4))
        if w not in words:
            words.append(w)
    vocab = [words[d * WORDS_PER_DOC:(d + 1) * WORDS_PER_DOC] for d in range(N_DOCS)]
    docs = []
    for d in range(N_DOCS):
        sentences = []
        for _ in range(rng.integers(6, 13)):
            ws = list(rng.choice(vocab[d], rng.integers(3, 9)))
            sentences.append(" ".join([ws[0].capitalize()] + ws[1:]) + ".")
        lines, i = [], 0  # a few sentences per line: exercises the sentence splitter
        while i < len(sentences):
            k = int(rng.integers(1, 4))
            lines.append(" ".join(sentences[i:i + k]))
            i += k
        docs.append("\n".join(lines))
    return "\n\n".join(docs) + "\n", vocab


@pytest.fixture(scope="module")
def corpus_text():
    return _make_corpus()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, corpus_text):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text[0])
    return path


@pytest.fixture(scope="module")
def tok(corpus_text):
    t = tokenizer.train([corpus_text[0]] * 4, kind="wordpiece", vocab_size=500, min_frequency=2)
    return t


@pytest.fixture(scope="module")
def bpe(corpus_text):
    return tokenizer.train([corpus_text[0]] * 4, kind="bpe", vocab_size=500, min_frequency=2)


@pytest.fixture(scope="module")
def word_doc(tok, corpus_text):
    """token id -> document index, for every word token (punctuation maps to nothing)."""
    vocab = corpus_text[1]
    out = {}
    for d, words in enumerate(vocab):
        for w, ids in zip(words, tok.tokenize_batch(words)):
            assert len(ids) == 1, f"{w} is not one token: the corpus fixture assumes it is"
            out[ids[0]] = d
    return out


@pytest.fixture(scope="module")
def splits(tmp_path_factory, corpus_file, tok):
    return data.build_cache([corpus_file], tok, tmp_path_factory.mktemp("cache"), val_fraction=0.1)


@pytest.fixture(scope="module")
def masker(tok):
    return data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids)


def _original(batch):
    """input_ids with the masking undone."""
    return torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])


def _contains(haystack, needle):
    h, n = list(map(int, haystack)), list(map(int, needle))
    return any(h[i:i + len(n)] == n for i in range(len(h) - len(n) + 1))


def _doc_tokens(corpus, d):
    lo, hi = corpus.doc_token_range(d)
    return np.asarray(corpus.tokens[lo:hi])


# ----------------------------------------------------------------------------- default corpus and resolve_data

def test_default_corpus_builds_from_stdlib_and_is_cached(tmp_path):
    t = time.perf_counter()
    files = data.default_corpus(tmp_path)
    build_s = time.perf_counter() - t
    assert len(files) == 1 and files[0].is_file() and files[0].parent == tmp_path / "corpus"
    assert "antigravity" not in sys.modules and "this" not in sys.modules  # parsed, never imported
    text = files[0].read_text(encoding="utf-8")
    assert not any(line.lstrip().startswith((">>>", "...")) for line in text.splitlines())
    docs = list(data.read_documents(files))
    assert len(docs) > 1000, f"only {len(docs)} documents"
    assert sum(map(len, docs)) > 10000
    assert "Assert statements are a convenient way to insert debugging assertions into a program:" in text  # a topic
    mtime = files[0].stat().st_mtime_ns
    t = time.perf_counter()
    again = data.default_corpus(tmp_path)
    assert again == files and files[0].stat().st_mtime_ns == mtime
    assert time.perf_counter() - t < 0.1 < build_s
    assert data.resolve_data(None, tmp_path) == files == data.resolve_data([], tmp_path)


def test_resolve_data_file_folder_glob(tmp_path):
    (tmp_path / "sub").mkdir()
    a, b, c = tmp_path / "a.txt", tmp_path / "sub" / "b.txt", tmp_path / "notes.md"
    for p in (a, b, c):
        p.write_text("Some text.\n")
    assert data.resolve_data([str(a)]) == [a.resolve()]
    assert data.resolve_data([str(c)]) == [c.resolve()]  # a named file needs no .txt suffix
    assert data.resolve_data([str(tmp_path)]) == [a.resolve(), b.resolve()]
    assert data.resolve_data([str(tmp_path / "**" / "*.txt")]) == [a.resolve(), b.resolve()]
    assert data.resolve_data([str(tmp_path / "*.md"), str(a), str(tmp_path)]) == [c.resolve(), a.resolve(), b.resolve()]


@pytest.mark.parametrize("case", ["missing", "glob", "no_txt", "empty", "nul", "latin1"])
def test_resolve_data_errors_name_the_path(tmp_path, case):
    target = tmp_path / "x.txt"
    if case == "missing":
        spec = str(tmp_path / "nope.txt")
    elif case == "glob":
        spec = str(tmp_path / "*.nothing")
    elif case == "no_txt":
        (tmp_path / "only.md").write_text("hello")
        spec, target = str(tmp_path), tmp_path
    elif case == "empty":
        target.write_text("  \n\n\t\n")
        spec = str(target)
    elif case == "nul":
        target.write_bytes(b"Hello world.\n\x00\x01binary")
        spec = str(target)
    else:
        target.write_bytes("Caf\u00e9 ok. ".encode() + b"Caf\xe9 not.")
        spec = str(target)
    with pytest.raises(data.DataError) as err:
        data.resolve_data([spec])
    message = str(err.value)
    assert (spec if case in ("missing", "glob") else str(target.resolve() if case != "no_txt" else target)) in message
    if case == "nul":
        assert "offset 13" in message
    if case == "latin1":
        assert "offset 13" in message and "0xe9" in message


def test_check_text_file_offset_across_chunks(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"ab" + "\u00e9\u00e9".encode() + b"cd\xff")  # a 2-byte char straddles the 3-byte chunks
    with pytest.raises(data.DataError, match="offset 8"):
        data._check_text_file(path, chunk_size=3)
    path.write_bytes(b"ab" + "\u00e9".encode()[:1])  # truncated at the end of the file
    with pytest.raises(data.DataError, match="offset 2"):
        data._check_text_file(path, chunk_size=3)


# ----------------------------------------------------------------------------- read_documents

def test_read_documents_blocks_and_sentences(tmp_path):
    f1, f2 = tmp_path / "1.txt", tmp_path / "2.txt"
    f1.write_text('\n\nFirst doc. It has "quoted." Sentences! And e.g. this one? Yes 3.11 ok.\nA new line\n'
                  "   \n\n\nSecond doc here.\n\n")
    f2.write_text("No blank lines. So one document.\nStill the same one.")
    docs = list(data.read_documents([f1, f2]))
    assert docs == [["First doc.", 'It has "quoted."', "Sentences!", "And e.g. this one?", "Yes 3.11 ok.",
                     "A new line"],
                    ["Second doc here."],
                    ["No blank lines.", "So one document.", "Still the same one."]]
    assert data.split_sentences("lower. case stays. Mr. X goes (Yes.) 'Quoted' too.") == \
        ["lower. case stays.", "Mr.", "X goes (Yes.)", "'Quoted' too."]


# ----------------------------------------------------------------------------- build_cache

def test_build_cache_round_trip_and_split(splits, corpus_file, tok):
    train, val = splits
    docs = list(data.read_documents([corpus_file]))
    assert train.tokens.dtype == np.uint16 and isinstance(train.tokens, np.memmap)
    assert val.n_docs == round(0.1 * len(docs)) and train.n_docs + val.n_docs == len(docs)
    cached = [train.document(i) for i in range(train.n_docs)] + [val.document(i) for i in range(val.n_docs)]
    as_lists = [[s.tolist() for s in d] for d in cached]
    expected = [tok.tokenize_batch(d) for d in docs]
    assert sorted(as_lists) == sorted(expected)  # every document exactly once, whole, in one split
    train_docs = {tuple(map(tuple, d)) for d in as_lists[:train.n_docs]}
    assert not train_docs & {tuple(map(tuple, d)) for d in as_lists[train.n_docs:]}
    i = expected.index(as_lists[0])
    assert tok.decode(np.concatenate(cached[0])) == " ".join(docs[i]).lower()
    assert train.n_sentences == sum(len(d) for d in cached[:train.n_docs])
    assert train.n_tokens == train.sent_offsets[-1] == sum(len(s) for d in cached[:train.n_docs] for s in d)


def test_build_cache_reuse_and_keys(tmp_path, corpus_file, tok, bpe):
    train, _ = data.build_cache([corpus_file], tok, tmp_path)
    meta = train.folder / "meta.json"
    mtime = meta.stat().st_mtime_ns
    t = time.perf_counter()
    again, _ = data.build_cache([corpus_file], tok, tmp_path)
    assert time.perf_counter() - t < 0.5
    assert again.folder == train.folder and meta.stat().st_mtime_ns == mtime
    other, _ = data.build_cache([corpus_file], bpe, tmp_path)
    assert other.folder != train.folder and other.n_tokens != train.n_tokens
    copy = tmp_path / "copy.txt"
    copy.write_text(corpus_file.read_text())
    assert data.build_cache([copy], tok, tmp_path)[0].folder != train.folder
    assert len([p for p in (tmp_path / "tokens").iterdir()]) == 3  # no temporary build folders left behind


def test_build_cache_single_document_and_empty(tmp_path, tok):
    one = tmp_path / "one.txt"
    one.write_text("Just one document. With two sentences.")
    train, val = data.build_cache([one], tok, tmp_path)
    assert (train.n_docs, train.n_sentences, val.n_docs, val.n_tokens) == (1, 2, 0, 0)
    for n, n_val in ((2, 1), (3, 1), (4, 2), (5, 2)):
        several = tmp_path / f"{n}.txt"
        several.write_text("\n\n".join(f"Document {i}." for i in range(n)))
        train, val = data.build_cache([several], tok, tmp_path, val_fraction=0.05)
        assert (train.n_docs, val.n_docs) == (n - n_val, n_val)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(data.DataError, match="empty"):
        data.build_cache([empty], tok, tmp_path)


# ----------------------------------------------------------------------------- Masker

def _masker_input(n_rows=1600, seq=128, vocab=500, specials=(0, 1, 2, 3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(specials), vocab, (n_rows, seq), generator=g)
    ids[:, 0], ids[:, 60] = 2, 3                                      # [CLS] ... [SEP] inside
    lengths = torch.randint(seq // 2, seq + 1, (n_rows,), generator=g)
    ids[torch.arange(seq) >= lengths[:, None]] = 0                     # padding
    return ids


def test_masker_statistics():
    ids, specials = _masker_input(), [0, 1, 2, 3, 4]
    original = ids.clone()
    masked, labels = data.Masker(500, 4, specials)(ids, torch.Generator().manual_seed(0))
    assert torch.equal(ids, original)  # the input is left alone
    special = torch.isin(ids, torch.tensor(specials))
    chosen = labels != -100
    n_maskable = int((~special).sum())
    assert n_maskable > 100_000
    assert abs(chosen.sum() / n_maskable - 0.15) < 0.005
    assert not chosen[special].any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == -100).all()
    assert torch.equal(masked[~chosen], ids[~chosen])
    n = int(chosen.sum())
    to_mask = chosen & (masked == 4)
    to_random = chosen & (masked != 4) & (masked != ids)
    kept = chosen & (masked == ids)
    assert abs(to_mask.sum() / n - 0.8) < 0.015
    assert abs(to_random.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    assert not torch.isin(masked[chosen & ~to_mask], torch.tensor(specials)).any()


def test_masker_custom_ratios_and_tiny_vocab():
    ids = _masker_input(400)
    masked, labels = data.Masker(500, 4, [0, 1, 2, 3, 4], mlm_probability=0.3, mask_ratio=0.85, random_ratio=0.0)(
        ids, torch.Generator().manual_seed(1))
    chosen = labels != -100
    maskable = ~torch.isin(ids, torch.tensor([0, 1, 2, 3, 4]))
    assert abs(chosen.sum() / maskable.sum() - 0.3) < 0.01
    assert abs((masked[chosen] == 4).float().mean() - 0.85) < 0.015
    assert torch.equal(masked[chosen & (masked != 4)], ids[chosen & (masked != 4)])  # no random replacements
    # random replacements come from the 3 ordinary ids of a vocabulary of 8, never from the 5 specials
    ids = torch.randint(5, 8, (200, 64))
    masked, labels = data.Masker(8, 4, [0, 1, 2, 3], mlm_probability=0.5, mask_ratio=0.0, random_ratio=1.0)(
        ids, torch.Generator().manual_seed(2))
    assert ((labels != -100).float().mean() - 0.5).abs() < 0.02
    assert set(masked.unique().tolist()) == {5, 6, 7}


def test_masker_every_row_gets_a_target():
    ids = torch.zeros(64, 16, dtype=torch.long)
    ids[:, 0], ids[:, 1], ids[:, 2] = 2, 7, 3   # [CLS] word [SEP] pad...: one maskable token per row
    ids[-1, 1] = 0                              # a row with nothing to mask
    masked, labels = data.Masker(500, 4, [0, 1, 2, 3, 4])(ids, torch.Generator().manual_seed(0))
    assert ((labels[:-1] != -100).sum(1) == 1).all() and (labels[:-1, 1] == 7).all()
    assert (labels[-1] == -100).all()
    again = data.Masker(500, 4, [0, 1, 2, 3, 4])(ids, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)


@pytest.mark.parametrize("kwargs, text", [(dict(mlm_probability=1.5), "mlm_probability=1.5"),
                                          (dict(mask_ratio=-0.1), "mask_ratio=-0.1"),
                                          (dict(mask_ratio=0.8, random_ratio=0.3), "0.8 + 0.3")])
def test_masker_rejects_bad_ratios(kwargs, text):
    with pytest.raises(ValueError, match=text.replace("+", r"\+")):
        data.Masker(500, 4, [0, 1, 2, 3], **kwargs)


# ----------------------------------------------------------------------------- PretrainingBatches

def _batches(splits, tok, masker, objective="mlm", **kw):
    kw = {"seq_len": 32, "batch_size": 16, **kw}
    return data.PretrainingBatches(splits[0], tok, objective, masker=masker, **kw)


def _segments(row, types, mask, tok):
    """[CLS] A [SEP] B [SEP] pad... -> (A, B), checking the layout and the token types on the way."""
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and (row[n:] == tok.pad_id).all() and (types[n:] == 0).all()
    seps = (row[:n] == tok.sep_id).nonzero().flatten().tolist()
    assert row[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
    assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:n] == 1).all()
    a, b = row[1:seps[0]], row[seps[0] + 1:n - 1]
    assert len(a) > 0 and len(b) > 0
    return a, b


def _doc_of(tokens, word_doc):
    """The document whose words `tokens` hold; None for punctuation only (a sentence cut just before its '.')."""
    docs = {word_doc[int(t)] for t in tokens if int(t) in word_doc}
    assert len(docs) <= 1, f"segment mixes documents {docs}"
    return docs.pop() if docs else None


def test_nsp_pairs(splits, tok, masker, word_doc):
    batches = _batches(splits, tok, masker, "mlm+nsp")
    train = splits[0]
    corpus_docs = {}  # corpus document index (word owner) -> tokens in the train split
    for d in range(train.n_docs):
        toks = _doc_tokens(train, d)
        corpus_docs[_doc_of(toks, word_doc)] = toks
    labels = []
    for step in range(40):
        b = batches.get_batch(step)
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}
        assert b["input_ids"].shape == (16, 32) and b["attention_mask"].dtype == torch.bool
        ids = _original(b)
        for row, types, mask, label in zip(ids, b["token_type_ids"], b["attention_mask"], b["next_sentence_label"]):
            a, bb = _segments(row, types, mask, tok)
            da, db = _doc_of(a, word_doc), _doc_of(bb, word_doc)
            joined = torch.cat([a, bb])
            assert da is not None and _contains(corpus_docs[da], a)
            if label == 0:  # IsNext: B is the true continuation of A
                assert db in (da, None) and _contains(corpus_docs[da], joined)
            else:           # NotNext: B comes from another document, starting at a sentence (a word)
                assert db is not None and db != da and _contains(corpus_docs[db], bb)
                assert not _contains(corpus_docs[da], joined)
            labels.append(int(label))
    assert abs(np.mean(labels) - 0.5) < 0.06


def test_sop_pairs(splits, tok, masker, word_doc):
    batches = _batches(splits, tok, masker, "mlm+sop")
    train = splits[0]
    labels = []
    for step in range(30):
        b = batches.get_batch(step)
        assert "sentence_order_label" in b and "next_sentence_label" not in b
        for row, types, mask, label in zip(_original(b), b["token_type_ids"], b["attention_mask"],
                                           b["sentence_order_label"]):
            a, bb = _segments(row, types, mask, tok)
            d = _doc_of(torch.cat([a, bb]), word_doc)  # both segments from one document
            toks = next(_doc_tokens(train, i) for i in range(train.n_docs)
                        if _doc_of(_doc_tokens(train, i), word_doc) == d)
            in_order = torch.cat([a, bb]) if label == 0 else torch.cat([bb, a])
            assert _contains(toks, in_order)  # consecutive, swapped exactly when label = 1
            labels.append(int(label))
    assert abs(np.mean(labels) - 0.5) < 0.07


def test_mlm_rows_are_whole_sentences_of_one_document(splits, tok, masker, word_doc):
    batches = _batches(splits, tok, masker, "mlm", seq_len=24)
    train = splits[0]
    starts = set(train.sent_offsets[:-1].tolist())
    lengths = []
    for step in range(10):
        b = batches.get_batch(step)
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        assert (b["token_type_ids"] == 0).all() and ((b["labels"] != -100).sum(1) > 0).all()
        for e, row, mask in zip(batches.example_ids(step), _original(b), b["attention_mask"]):
            n = int(mask.sum())
            assert row[0] == tok.cls_id and row[n - 1] == tok.sep_id and (row[n:] == tok.pad_id).all()
            start, end = batches._start[e], batches._end[e]
            assert torch.equal(row[1:n - 1], torch.from_numpy(train.tokens[start:end].astype(np.int64)))
            _doc_of(row[1:n - 1], word_doc)
            assert start in starts
            lengths.append(n)
    assert max(lengths) <= 24 and min(lengths) < 24
    rtd = _batches(splits, tok, masker, "rtd", seq_len=24).get_batch(3)  # rtd: the same stream as mlm
    assert all(torch.equal(v, batches.get_batch(3)[k]) for k, v in rtd.items())


def test_packed_rows(splits, bpe, tmp_path, corpus_file):
    train, _ = data.build_cache([corpus_file], bpe, tmp_path, val_fraction=0.1)
    masker = data.Masker(bpe.vocab_size, bpe.mask_id, bpe.special_ids)
    batches = data.PretrainingBatches(train, bpe, "mlm", 40, 8, masker, packed=True)
    W = 38
    stream = np.concatenate([np.append(_doc_tokens(train, d), bpe.sep_id) for d in range(train.n_docs)])
    stream = np.concatenate([stream, stream[:W]])  # the stream is read cyclically
    assert batches.n_examples == -(-(train.n_tokens + train.n_docs) // W)
    seen = {}
    for step in range(2 * batches.n_examples // 8 + 2):
        b = batches.get_batch(step)
        assert b["input_ids"].shape == (8, 40) and b["attention_mask"].all() and (b["token_type_ids"] == 0).all()
        ids = _original(b)
        assert (ids[:, 0] == bpe.cls_id).all() and (ids[:, -1] == bpe.sep_id).all()
        assert not (ids == bpe.pad_id).any()
        for e, row, labels in zip(batches.example_ids(step), ids, b["labels"]):
            assert torch.equal(row[1:-1], torch.from_numpy(stream[e * W:(e + 1) * W].astype(np.int64)))
            seen.setdefault(int(e), []).append(labels)
    repeated = [v for v in seen.values() if len(v) > 1]
    assert repeated and all(not torch.equal(v[0], v[1]) for v in repeated)  # masked anew at each visit
    with pytest.raises(ValueError, match="packed"):
        data.PretrainingBatches(train, bpe, "mlm+nsp", 40, 8, masker, packed=True)


def test_packed_rows_number_their_documents(bpe, tmp_path, corpus_file):
    """separate_documents=True: the same rows, plus document_ids that change exactly after each separator
    the corpus stream puts between documents (and nowhere else), rebuilt here from the stream itself."""
    train, _ = data.build_cache([corpus_file], bpe, tmp_path, val_fraction=0.1)
    masker = data.Masker(bpe.vocab_size, bpe.mask_id, bpe.special_ids)
    plain = data.PretrainingBatches(train, bpe, "mlm", 40, 8, masker, packed=True)
    apart = data.PretrainingBatches(train, bpe, "rtd", 40, 8, masker, packed=True, separate_documents=True)
    W = 38
    is_sep = np.concatenate([np.append(np.zeros(len(_doc_tokens(train, d)), bool), True) for d in range(train.n_docs)])
    is_sep = np.concatenate([is_sep, is_sep[:W]])                         # read cyclically, as the rows are
    n_boundaries = 0
    for step in range(batches_per_epoch := -(-plain.n_examples // 8)):
        a, b = plain.get_batch(step), apart.get_batch(step)
        assert "document_ids" not in a and all(torch.equal(a[k], b[k]) for k in a)   # only the ids are new
        doc = b["document_ids"]
        assert doc.shape == (8, 40) and doc.dtype == torch.long
        for e, row in zip(apart.example_ids(step), doc):
            seps = is_sep[e * W:(e + 1) * W]
            want = np.concatenate([[0], np.cumsum(seps)[:-1]])               # +1 after every separator
            assert row[0] == 0 and row[-1] == row[-2]                        # [CLS] with the first, </s> the last
            assert torch.equal(row[1:-1], torch.from_numpy(want))
            n_boundaries += int(row[-1])
    assert n_boundaries > batches_per_epoch                                  # rows hold several documents
    with pytest.raises(ValueError, match="packed=True"):
        data.PretrainingBatches(train, bpe, "mlm", 40, 8, masker, separate_documents=True)


def test_packed_documents_train_as_if_alone(bpe, tmp_path, corpus_file):
    """A BERT fed a packed row with its document_ids gives each document the outputs it gets alone."""
    import bert
    train, _ = data.build_cache([corpus_file], bpe, tmp_path, val_fraction=0.1)
    masker = data.Masker(bpe.vocab_size, bpe.mask_id, bpe.special_ids, mlm_probability=0.0)
    b = data.PretrainingBatches(train, bpe, "mlm", 40, 2, masker, packed=True, separate_documents=True).get_batch(0)
    torch.manual_seed(0)
    model = bert.BertModel(bert.BertConfig.from_preset("tiny", vocab_size=bpe.vocab_size, num_hidden_layers=1)).eval()
    with torch.no_grad():
        packed = model(b["input_ids"], b["attention_mask"], document_ids=b["document_ids"])   # (2, 40, H)
        for r in range(2):
            for d in b["document_ids"][r].unique():
                at = (b["document_ids"][r] == d).nonzero().squeeze(1)
                alone = model(b["input_ids"][r, at][None])[0]                                   # (n, H)
                torch.testing.assert_close(packed[r, at], alone, atol=1e-5, rtol=1e-5)


def test_batches_are_a_pure_function_of_seed_step_rank(splits, tok, masker):
    first, second = _batches(splits, tok, masker, "mlm+nsp"), _batches(splits, tok, masker, "mlm+nsp")
    second.get_batch(11)  # a different history changes nothing
    a, b = first.get_batch(5), second.get_batch(5)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first.get_batch(6)["input_ids"], a["input_ids"])
    assert not torch.equal(_batches(splits, tok, masker, "mlm+nsp", seed=1).get_batch(5)["input_ids"], a["input_ids"])
    r0 = _batches(splits, tok, masker, "mlm", rank=0, world_size=2)
    r1 = _batches(splits, tok, masker, "mlm", rank=1, world_size=2)
    assert not set(r0.example_ids(0)) & set(r1.example_ids(0))
    assert not torch.equal(r0.get_batch(0)["input_ids"], r1.get_batch(0)["input_ids"])
    with pytest.raises(ValueError, match="rank"):
        _batches(splits, tok, masker, rank=2, world_size=2)


def test_batches_walk_the_corpus(splits, tok, masker):
    batches = _batches(splits, tok, masker, "mlm", batch_size=4)
    n = batches.n_examples
    steps = n // 4 + 1
    order = np.concatenate([batches.example_ids(s) for s in range(2 * steps)])
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:2 * n]) == list(range(n))  # once per epoch
    assert not np.array_equal(order[:n], order[n:2 * n])                                   # in a new order
    assert batches.epoch(0) == 0 and batches.epoch(steps) == 1


def test_iterate_prefetches_and_stops(splits, tok, masker):
    batches = _batches(splits, tok, masker, "mlm+sop")
    assert batches.tokens_per_batch == 16 * 32
    it = batches.iterate(start_step=3)
    for step, got in zip(range(3, 6), it):
        want = batches.get_batch(step)
        assert all(torch.equal(got[k], want[k]) for k in want)
    it.close()
    time.sleep(0.05)
    assert not any(t.name == "PretrainingBatches" and t.is_alive() for t in threading.enumerate())
    assert torch.equal(next(iter(batches))["input_ids"], batches.get_batch(0)["input_ids"])

    def broken(step):
        raise RuntimeError(f"boom at {step}")
    batches.get_batch = broken
    with pytest.raises(RuntimeError, match="boom at 7"):
        next(batches.iterate(7))


def test_corpus_too_small_for_nsp(tmp_path, tok, masker):
    one = tmp_path / "one.txt"
    one.write_text("Only one document here. It has two sentences.")
    train, _ = data.build_cache([one], tok, tmp_path)
    with pytest.raises(data.DataError, match="2 non-empty documents"):
        data.PretrainingBatches(train, tok, "mlm+nsp", 32, 4, masker)
    sop = data.PretrainingBatches(train, tok, "mlm+sop", 32, 4, masker).get_batch(0)
    assert sop["input_ids"].shape == (4, 32)
