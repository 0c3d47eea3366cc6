"""Tests for data.py's masking options: whole-word masking for the three tokenizer kinds, ALBERT's n-gram
spans, the masking rate, and train.py's flags for them (--whole-word-mask, --ngram, --mask-rate).

Words are computed here without the masker's vocabulary table: from the `tokenizers` Encoding's word_ids for
WordPiece and Unigram (their pre-tokenizers split words as the ## and ▁ markers do), and from the text between
the tokens' offsets for byte-level BPE (a word begins where whitespace precedes a token). The batches built from
the token cache, which tokenizes sentence by sentence, are checked against each sentence's word_ids (for BPE
joined where no whitespace lies between two of them), every sentence's first word included."""
import importlib

import numpy as np
import pytest
import torch

import data
import tokenizer
import train
from test_train import base_args, write_corpus

P_NGRAM = {n: np.array([1 / k for k in range(1, n + 1)]) / sum(1 / k for k in range(1, n + 1)) for n in (2, 3)}


def _sentences(n, seed=0):
    """Sentences of pseudo-words of 2-12 letters (long ones split into several tokens of a small vocabulary),
    capitalized, with commas and a full stop, so that punctuation sits next to words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 13))) for _ in range(400)]
    out = []
    for _ in range(n):
        words = [vocab[i] for i in rng.integers(0, len(vocab), rng.integers(4, 11))]
        words = [w + "," if rng.random() < 0.1 else w for w in words[:-1]] + words[-1:]
        out.append(" ".join(words).capitalize() + ".")
    return out


TEXTS = _sentences(600)


@pytest.fixture(scope="module", params=tokenizer.KINDS)
def tok(request):
    return tokenizer.train(TEXTS * 2, kind=request.param, vocab_size=400 if request.param == "bpe" else 250,
                           min_frequency=1)


def _rows(tok, sentences_per_segment=6, n_rows=300, seed=1):
    """Pairs of segments (several sentences each) with their special tokens, right-padded:
    (ids (B, T), words (B, T)), words numbering each row's words 0, 1, ... left to right (-1 at special tokens
    and padding), computed from the Encoding (module docstring)."""
    rng = np.random.default_rng(seed)
    pick = lambda: " ".join(TEXTS[i] for i in rng.integers(0, len(TEXTS), sentences_per_segment))
    pairs = [(pick(), pick()) for _ in range(n_rows)]
    encodings = [tok.backend.encode(a, b) for a, b in pairs]
    T = max(len(e.ids) for e in encodings)
    ids, words = torch.full((n_rows, T), tok.pad_id), torch.full((n_rows, T), -1)
    for r, (e, pair) in enumerate(zip(encodings, pairs)):
        assert tok.unk_id not in e.ids, "the fixture expects no unknown tokens"
        ids[r, :len(e.ids)] = torch.tensor(e.ids)
        count, prev = -1, None                                # prev: (sequence, end offset) of the previous token
        for i, (seq, word, (start, end), special) in enumerate(zip(e.sequence_ids, e.word_ids, e.offsets,
                                                                    e.special_tokens_mask)):
            if special:
                prev = None
                continue
            if tok.kind == "bpe":
                new = prev is None or prev[0] != seq or any(c.isspace() for c in pair[seq][prev[1]:start])
                prev = (seq, end)
            else:
                new = prev is None or prev != (seq, word)
                prev = (seq, word)
            count += new
            words[r, i] = count
    return ids, words


@pytest.fixture(scope="module")
def rows(tok):
    return _rows(tok)


def _masker(tok, words=True, **kw):
    return data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids,
                       word_starts=data.word_start_table(tok) if words else None, **kw)


def _lengths(span, unit_of):
    """{(row, span): its length in units}, units numbered per row by unit_of (B, T); -1 = not in a span."""
    out = {}
    for r, (s_row, u_row) in enumerate(zip(span.tolist(), unit_of.tolist())):
        units = {}
        for s, u in zip(s_row, u_row):
            if s >= 0:
                units.setdefault(s, set()).add(u)
        out.update({(r, s): len(u) for s, u in units.items()})
    return out


# ----------------------------------------------------------------------------- word boundaries

def test_word_start_table_marks_the_first_token_of_every_word(tok, rows):
    ids, words = rows
    table = data.word_start_table(tok)
    assert table.shape == (tok.vocab_size,) and table.dtype == torch.bool and table[tok.special_ids].all()
    real = words >= 0
    first = real & torch.cat([torch.ones(len(words), 1, dtype=torch.bool), words[:, 1:] != words[:, :-1]], 1)
    after_special = real & torch.cat([torch.ones(len(words), 1, dtype=torch.bool), words[:, :-1] < 0], 1)
    # inside a segment the table alone tells every word start (the start of a segment is one by position)
    assert torch.equal(table[ids][real & ~after_special], first[real & ~after_special])
    assert (~first[real]).sum() > 0.2 * real.sum(), "too few multi-token words to test anything"


@pytest.mark.parametrize("max_ngram", [1, 3])
def test_whole_word_masking_masks_all_or_none_of_each_word(tok, rows, max_ngram):
    ids, words = rows
    masker = _masker(tok, max_ngram=max_ngram, mlm_probability=0.3)
    if max_ngram == 1:                                       # the masker's units are exactly the words
        span, _ = masker.spans(ids, torch.Generator().manual_seed(0))
        assert torch.equal(span, words)
    masked, labels = masker(ids, torch.Generator().manual_seed(0))
    real = words >= 0
    word = (torch.arange(len(ids))[:, None] * ids.shape[1] + words)[real]     # one number per (row, word)
    chosen = (labels != -100)[real].long()
    n = ids.numel()
    tokens = torch.zeros(n, dtype=torch.long).index_add_(0, word, torch.ones_like(word))
    hits = torch.zeros(n, dtype=torch.long).index_add_(0, word, chosen)
    assert ((hits == 0) | (hits == tokens)).all()            # every word: none or all of its tokens chosen
    assert ((hits == tokens) & (tokens > 1)).sum() > 100      # chosen words of several tokens, all of them chosen


def test_special_tokens_are_never_masked(tok, rows):
    ids, _ = rows
    special = torch.isin(ids, torch.tensor(tok.special_ids))
    for kw in (dict(), dict(max_ngram=3), dict(max_ngram=3, per_span=True)):
        for words in (True, False):
            masked, labels = _masker(tok, words, mlm_probability=0.5, **kw)(ids, torch.Generator().manual_seed(1))
            chosen = labels != -100
            assert not chosen[special].any() and torch.equal(masked[special], ids[special])
            assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
            assert not torch.isin(masked[chosen & (masked != tok.mask_id)], torch.tensor(tok.special_ids)).any()


def test_word_start_table_refuses_tokenizers_without_word_markers():
    from tokenizers import pre_tokenizers
    bpe = tokenizer.train(TEXTS, kind="bpe", vocab_size=300, min_frequency=1)
    bpe.backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="not byte-level.*whole-word masking needs"):
        data.word_start_table(bpe)
    unigram = tokenizer.train(TEXTS, kind="unigram", vocab_size=200)
    unigram.backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    with pytest.raises(ValueError, match="no Metaspace pre-tokenizer"):
        data.word_start_table(unigram)


def test_masker_rejects_bad_options():
    with pytest.raises(ValueError, match="max_ngram=0"):
        data.Masker(500, 4, [0, 1, 2, 3], max_ngram=0)
    with pytest.raises(ValueError, match=r"shape \(500,\)"):
        data.Masker(500, 4, [0, 1, 2, 3], word_starts=torch.ones(499, dtype=torch.bool))


# ----------------------------------------------------------------------------- rate and n-gram spans

def _random_rows(n_rows=400, T=128, seed=0):
    """Random ordinary ids in rows [CLS] ... [SEP] ... [SEP] pad (specials 0-4, mask 4): two stretches a row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (n_rows, T), generator=g)
    ids[:, 0], ids[:, 60], ids[:, T - 8], ids[:, T - 7:] = 2, 3, 3, 0
    return ids


@pytest.mark.parametrize("rate", [0.15, 0.3])
@pytest.mark.parametrize("words, max_ngram", [(True, 1), (False, 3), (True, 3)])
def test_masked_share_is_the_rate(tok, rows, rate, words, max_ngram):
    """Every span is chosen with probability `rate`, so the chosen share of the ordinary tokens is `rate` within
    4 standard deviations of a sum of span lengths each drawn with that probability (the rows are long enough
    that no row goes without a target, which would add one)."""
    ids, _ = rows
    masker = _masker(tok, words, max_ngram=max_ngram, mlm_probability=rate)
    span, maskable = masker.spans(ids, torch.Generator().manual_seed(2))     # the spans the call below uses
    _, labels = masker(ids, torch.Generator().manual_seed(2))
    n = int(maskable.sum())
    token_counts = np.concatenate([np.bincount(s[s >= 0].numpy()) for s in span])   # tokens of every span
    sigma = (rate * (1 - rate) * (token_counts.astype(float) ** 2).sum()) ** 0.5 / n
    share = float((labels != -100).sum()) / n
    assert abs(share - rate) < 4 * sigma, (share, rate, sigma)
    assert n > 50_000


def _check_ngram_lengths(masker, ids, unit_of, max_ngram):
    """ALBERT's p(n) ~ 1/n for n <= max_ngram. A stretch is tiled by spans whose lengths are independent draws,
    the last one cut short where the stretch ends; so the first k spans of a stretch of at least max_ngram * k
    units are exact draws: their lengths, counted in the units of unit_of (B, T), must pass a chi-square test
    at p = 0.001. The chosen spans are a length-blind sample of them: the same test."""
    span, maskable = masker.spans(ids, torch.Generator().manual_seed(3))      # the spans the call below uses
    _, labels = masker(ids, torch.Generator().manual_seed(3))
    lengths = _lengths(span, unit_of)
    exact, chosen = [], []
    for r in range(len(ids)):
        stretches, current = [], []
        for si, mi in zip(span[r].tolist(), maskable[r].tolist()):           # the spans of each stretch, in order
            if not mi:
                current = []
                continue
            if not current:
                stretches.append(current)
            if si not in current:
                current.append(si)
        for spans_of in stretches:
            assert all(1 <= lengths[r, x] <= max_ngram for x in spans_of)
            k = sum(lengths[r, x] for x in spans_of) // max_ngram
            exact += [lengths[r, x] for x in spans_of[:k]]
            chosen += [lengths[r, x] for x in spans_of[:k] if bool((labels[r][span[r] == x] != -100).all())]
    for sample in (exact, chosen):
        counts = np.bincount(sample, minlength=max_ngram + 1)[1:]
        expected = P_NGRAM[max_ngram] * len(sample)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert len(sample) > 1500 and chi2 < {2: 10.83, 3: 13.82}[max_ngram], (counts, expected, chi2)


@pytest.mark.parametrize("max_ngram", [2, 3])
def test_ngram_spans_of_words_follow_one_over_n(tok, rows, max_ngram):
    ids, words = rows
    _check_ngram_lengths(_masker(tok, max_ngram=max_ngram, mlm_probability=0.3), ids, words, max_ngram)


@pytest.mark.parametrize("max_ngram", [2, 3])
def test_ngram_spans_of_tokens_follow_one_over_n(max_ngram):
    ids = _random_rows()
    position = torch.where(ids > 4, torch.arange(ids.shape[1]).expand_as(ids), -1)    # every token is a unit
    _check_ngram_lengths(data.Masker(500, 4, [0, 1, 2, 3, 4], max_ngram=max_ngram, mlm_probability=0.3),
                         ids, position, max_ngram)


def test_spans_never_cross_special_tokens():
    ids = _random_rows(200)
    masker = data.Masker(500, 4, [0, 1, 2, 3, 4], max_ngram=3)
    span, maskable = masker.spans(ids, torch.Generator().manual_seed(4))
    stretch = (~maskable).cumsum(1)                              # stretch number of every token
    for r in range(len(ids)):
        for x in span[r][maskable[r]].unique():
            assert len(stretch[r][span[r] == x].unique()) == 1
            at = (span[r] == x).nonzero().flatten()
            assert torch.equal(at, torch.arange(int(at[0]), int(at[-1]) + 1))      # contiguous
    assert (span.amax(1) + 1).float().mean() < 0.7 * maskable.sum(1).float().mean()  # spans longer than 1 token


def test_treatment_per_token_by_default_per_span_on_request(tok, rows):
    """The released BERT-wwm and ALBERT code draw the 80/10/10 split per token; per_span=True once per span."""
    ids, _ = rows
    for per_span in (False, True):
        masker = _masker(tok, max_ngram=3, mlm_probability=0.3, per_span=per_span)
        span, _ = masker.spans(ids, torch.Generator().manual_seed(5))
        masked, labels = masker(ids, torch.Generator().manual_seed(5))
        chosen = labels != -100
        is_mask = masked == tok.mask_id
        mixed = total = 0
        for r in range(len(ids)):
            for x in span[r][chosen[r]].unique():
                at = span[r] == x
                if at.sum() > 1:
                    total += 1
                    mixed += bool(is_mask[r][at].any() and not is_mask[r][at].all())
        share = float(is_mask[chosen].float().mean())
        assert total > 500 and abs(share - 0.8) < 0.03
        assert (mixed == 0) if per_span else (mixed > 0.2 * total)


def test_rows_without_targets_get_one_span():
    ids = torch.zeros(64, 16, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 2, torch.tensor([7, 8, 9]), 3       # [CLS] three tokens [SEP] pad
    ids[-1, 1:4] = 0                                                       # a row with nothing to mask
    masker = data.Masker(500, 4, [0, 1, 2, 3, 4], mlm_probability=0.01, max_ngram=3)
    _, labels = masker(ids, torch.Generator().manual_seed(0))
    assert ((labels[:-1] != -100).sum(1) >= 1).all() and (labels[-1] == -100).all()


# ----------------------------------------------------------------------------- the default path and the batches

def test_default_masking_is_the_unchanged_token_masking(monkeypatch):
    """Fixed-seed outputs of the Masker as it was before whole-word and n-gram masking existed, and the default
    options never reach the new code."""
    def refuse(*a, **k):
        raise AssertionError("the default options took the whole-word / n-gram path")
    monkeypatch.setattr(data.Masker, "_mask_spans", refuse)
    monkeypatch.setattr(data.Masker, "spans", refuse)
    ids = torch.randint(5, 500, (3, 12), generator=torch.Generator().manual_seed(7))
    ids[:, 0], ids[:, 6], ids[2, 9:] = 2, 3, 0
    masked, labels = data.Masker(500, 4, [0, 1, 2, 3, 4], mlm_probability=0.5, mask_ratio=0.5, random_ratio=0.3)(
        ids, torch.Generator().manual_seed(11))
    assert masked.tolist() == [[2, 4, 336, 4, 18, 92, 3, 4, 108, 436, 87, 276],
                               [2, 4, 97, 270, 4, 222, 3, 308, 476, 495, 415, 221],
                               [2, 4, 4, 4, 357, 163, 3, 138, 4, 0, 0, 0]]
    assert labels.tolist() == [[-100, 162, -100, 421, -100, -100, -100, 154, -100, -100, 498, -100],
                               [-100, 452, -100, -100, 491, -100, -100, -100, -100, -100, -100, -100],
                               [-100, 88, 493, 447, 200, -100, -100, 465, 26, -100, -100, -100]]
    masked, labels = data.Masker(500, 4, [0, 1, 2, 3, 4], mlm_probability=0.01)(
        torch.tensor([[2, 7, 3, 0, 0]] * 3), torch.Generator().manual_seed(3))     # the starved-row rule
    assert masked.tolist() == [[2, 291, 3, 0, 0], [2, 4, 3, 0, 0], [2, 4, 3, 0, 0]]
    assert labels.tolist() == [[-100, 7, -100, -100, -100]] * 3


@pytest.fixture(scope="module")
def corpus(tok, tmp_path_factory):
    """The test sentences as documents of 8 sentences, tokenized into a cache with `tok`."""
    folder = tmp_path_factory.mktemp("masking")
    docs = [" ".join(TEXTS[i:i + 8]) for i in range(0, len(TEXTS), 8)]
    (folder / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    return data.build_cache([folder / "corpus.txt"], tok, folder / "cache", val_fraction=0.0)[0]


@pytest.mark.parametrize("layout", [dict(objective="mlm"), dict(objective="mlm", packed=True),
                                    dict(objective="mlm+sop")])
def test_batches_start_a_word_at_every_sentence(tok, corpus, layout):
    """The cache tokenizes sentences one by one, so byte-level BPE writes each sentence's first word without its
    'Ġ': the batches pass the sentence starts, and '.' and the next sentence's first word are two words (chosen
    together only by chance). For WordPiece and Unigram the markers already say so."""
    masker = _masker(tok, mlm_probability=0.5)
    batches = data.PretrainingBatches(corpus, tok, seq_len=128, batch_size=16, masker=masker, seed=0, **layout)
    dot = tok.tokenize_batch(["."])[0][-1]
    apart = together = 0
    for step in range(40):
        b = batches.get_batch(step)
        original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
        chosen = b["labels"] != -100
        boundary = (original[:, :-1] == dot) & ~torch.isin(original[:, 1:], torch.tensor(tok.special_ids))
        apart += int((chosen[:, :-1] != chosen[:, 1:])[boundary].sum())
        together += int((chosen[:, :-1] == chosen[:, 1:])[boundary].sum())
        # without the sentence starts, BPE's '.' and the next word are one unit
        span, _ = masker.spans(original, torch.Generator())
        joined = (span[:, :-1] == span[:, 1:])[boundary]
        assert joined.all() if tok.kind == "bpe" else not joined.any()
    assert apart + together > 150 and 0.35 < apart / (apart + together) < 0.65


def test_default_batches_do_not_look_for_sentence_starts(tok, corpus, monkeypatch):
    monkeypatch.setattr(data.PretrainingBatches, "_sentence_starts", lambda *a: 1 / 0)
    masker = data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids, mlm_probability=0.3)
    for layout in (dict(objective="mlm"), dict(objective="mlm", packed=True), dict(objective="mlm+nsp")):
        data.PretrainingBatches(corpus, tok, seq_len=64, batch_size=4, masker=masker, **layout).get_batch(0)


# ----------------------------------------------------------------------------- words in the batches vs the tokenizer's

def _word_documents(n_docs=120, seed=3):
    """Documents (lists of lines, several sentences a line) whose words meet in the ways the tokenizers tell
    apart: a space, two spaces, a tab, a no-break space, a thin space or an ideographic space between two
    words, punctuation, digits, an apostrophe, quotes and brackets (also before a sentence's first word),
    letters with accents, and now and then a sentence long enough that a row cuts it."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéü"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(300)]
    gaps, gap_p = [" ", "  ", "\t", "\u00a0", "\u2009", "\u3000"], [0.7, 0.06, 0.06, 0.06, 0.06, 0.06]
    forms = ["{},", "{}.{}", "{}'s", "({})", '"{}"', "{}-{}", "3.{}", "{}9"]

    def sentence():
        words = [vocab[i] for i in rng.integers(0, len(vocab), rng.integers(2, 50 if rng.random() < 0.1 else 8))]
        words = [forms[rng.integers(len(forms))].format(w, w[::-1]) if rng.random() < 0.15 else w for w in words]
        text = words[0].capitalize()
        for w in words[1:]:
            text += rng.choice(gaps, p=gap_p) + w
        opener = rng.choice(["", "", "", '"', "("])
        return opener + text + rng.choice([".", "!", "?"]) + {'"': '"', "(": ")", "": ""}[opener]

    return [[" ".join(sentence() for _ in range(rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
            for _ in range(n_docs)]


WORD_DOCUMENTS = _word_documents()


@pytest.fixture(scope="module", params=tokenizer.KINDS)
def word_corpus(request, tmp_path_factory):
    """(tok, corpus, word): a `kind` tokenizer trained on WORD_DOCUMENTS, their token cache, and for every token
    of the cache the number of its word, counted over the whole corpus from each sentence's Encoding.word_ids.
    Byte-level BPE's pre-tokenizer also splits punctuation and digits off a word ('world' '.'), which its
    whole-word masking (as RoBERTa's fairseq code) keeps with the word: for bpe, a word of the tokenizer's that
    neither begins with whitespace nor follows some is part of the word before it (so a tab's 'ĉ' + 'here' is
    one word, as in word_start_table)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"words-{kind}")
    (folder / "corpus.txt").write_text("\n\n".join("\n".join(lines) for lines in WORD_DOCUMENTS) + "\n")
    tok = tokenizer.train([str(folder / "corpus.txt")], kind=kind, vocab_size=600 if kind == "bpe" else 400,
                          min_frequency=1)
    corpus = data.build_cache([folder / "corpus.txt"], tok, folder / "cache", val_fraction=0.0)[0]
    sentences = [s for doc in data.read_documents([folder / "corpus.txt"]) for s in doc]
    assert len(sentences) == corpus.n_sentences
    word, count = np.zeros(corpus.n_tokens, np.int64), -1
    for k, text in enumerate(sentences):
        e = tok.backend.encode(text, add_special_tokens=False)
        a, b = corpus.sent_offsets[k], corpus.sent_offsets[k + 1]
        assert corpus.tokens[a:b].tolist() == e.ids and tok.unk_id not in e.ids
        prev = None                                                    # (word id, end offset) of the previous token
        for i, (w, (start, end)) in enumerate(zip(e.word_ids, e.offsets)):
            new = prev is None or w != prev[0]
            if kind == "bpe" and prev is not None:
                new = new and any(c.isspace() for c in text[prev[1]:start + 1])
            count += new
            word[a + i] = count
            prev = (w, end)
    assert count + 1 > 3 * len(sentences)
    if kind == "bpe":  # each kind of space begins a token here (split into its bytes, word_start_table misses it)
        from tokenizers import pre_tokenizers
        spell = lambda c: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(c)[0][0]
        used = [tok.id_to_token(int(i)) for i in np.unique(corpus.tokens)]
        assert all(any(t.startswith(spell(c)) for t in used) for c in "\t\u00a0\u2009\u3000")
    return tok, corpus, word


class _RecordingMasker(data.Masker):
    """A Masker that keeps what each call was given: (input_ids, starts)."""
    calls = None

    def __call__(self, input_ids, rng, starts=None):
        self.calls.append((input_ids.clone(), starts))
        return super().__call__(input_ids, rng, starts)


@pytest.mark.parametrize("layout", [dict(objective="mlm"), dict(objective="mlm", packed=True),
                                    dict(objective="mlm+nsp"), dict(objective="mlm+sop")], ids=str)
def test_batches_mask_the_tokenizers_words(word_corpus, layout):
    """Whole-word masking of the batches groups the tokens into exactly the tokenizer's words (the fixture's
    Encoding.word_ids), every sentence's first word included, whatever the whitespace before a word; a row
    that begins inside a word (a cut sentence, an NSP segment from a random token) begins a unit there.
    Each row's tokens are located in the corpus by the same batches over a copy of the corpus whose tokens are
    their own positions (the rows depend on the corpus's offsets and the seed only)."""
    tok, corpus, word = word_corpus
    V = tok.vocab_size
    masker = _RecordingMasker(V, tok.mask_id, tok.special_ids, mlm_probability=0.5,
                              word_starts=data.word_start_table(tok))
    masker.calls = []
    kw = dict(seq_len=96, batch_size=16, seed=0, **layout)
    batches = data.PretrainingBatches(corpus, tok, masker=masker, **kw)
    positions = data.TokenCorpus(np.arange(corpus.n_tokens) + V, corpus.sent_offsets, corpus.doc_offsets)
    where = data.PretrainingBatches(positions, tok, masker=data.Masker(corpus.n_tokens + V, tok.mask_id,
                                                                      tok.special_ids, mlm_probability=0.0), **kw)
    tokens = torch.from_numpy(corpus.tokens.astype(np.int64))
    n_words = n_first = 0
    for step in range(16):
        b = batches.get_batch(step)
        ids, starts = masker.calls[-1]
        pos = where.get_batch(step)["input_ids"] - V                       # (B, T) corpus position; < 0: special
        real = pos >= 0
        assert torch.equal(tokens[pos[real]], ids[real])                  # the positions are the rows' tokens
        w = torch.from_numpy(word)[pos.clamp(min=0)]                      # (B, T) the tokenizer's word
        prev_real = torch.cat([torch.zeros(len(pos), 1, dtype=torch.bool), real[:, :-1]], 1)
        continues = real & prev_real & torch.cat([torch.zeros(len(pos), 1, dtype=torch.bool),
                                                  (w[:, 1:] == w[:, :-1]) & (pos[:, 1:] == pos[:, :-1] + 1)], 1)
        want = torch.where(real, (real & ~continues).cumsum(1) - 1, -1)   # the words of each row numbered 0, 1, ...
        span, _ = masker.spans(ids, torch.Generator(), starts)
        assert torch.equal(span, want), f"step {step}: row {int((span != want).any(1).nonzero()[0])}"
        # and the masking itself: every word of the batch chosen whole or not at all
        chosen = b["labels"] != -100
        for r in range(len(ids)):
            for u in want[r][real[r]].unique():
                at_u = chosen[r][want[r] == u]
                assert at_u.all() or not at_u.any()
        sentence_start = real & torch.from_numpy(np.isin(pos.clamp(min=0).numpy(), corpus.sent_offsets[:-1]))
        n_first += int((sentence_start & prev_real).sum())
        n_words += int(want.amax(1).add(1).sum())
    assert n_words > 2000 and n_first > 100     # sentence starts inside a segment: position alone does not tell


# ----------------------------------------------------------------------------- train.py

@pytest.mark.parametrize("flags, match", [(["--mask-rate", "0"], "--mask-rate 0.0: .* strictly between 0 and 1"),
                                          (["--mask-rate", "1.5"], "--mask-rate 1.5"),
                                          (["--ngram", "0"], "--ngram 0: .* at least 1")])
def test_train_refuses_bad_masking_flags(flags, match):
    with pytest.raises(train.UsageError, match=match):
        train.parse_args(["--model", "bert", *flags])


def test_train_builds_the_masker_from_the_flags(corpus, tok):
    name, objective, mask_ratio = {"wordpiece": ("electra", "rtd", 0.85), "bpe": ("roberta", "mlm", 0.8),
                                   "unigram": ("albert", "mlm+sop", 0.8)}[tok.kind]
    family = importlib.import_module(name).FAMILY
    args = train.parse_args(["--model", name, "--seq-len", "64", "--batch-size", "4"])
    default = train.pretraining_batches(corpus, tok, family, objective, args, seed=0).masker
    assert default.word_starts is None and default.max_ngram == 1 and default.p == 0.15
    args = train.parse_args(["--model", name, "--seq-len", "64", "--batch-size", "4", "--mask-rate", "0.3",
                             "--whole-word-mask", "--ngram", "3"])
    masker = train.pretraining_batches(corpus, tok, family, objective, args, seed=0).masker
    assert masker.p == 0.3 and masker.max_ngram == 3
    assert torch.equal(masker.word_starts, data.word_start_table(tok))
    assert masker.mask_ratio == default.mask_ratio == mask_ratio                  # the family's (ELECTRA's 0.85)
    if tok.kind == "bpe":                                        # a BPE that is not byte-level: one clear error
        from tokenizers import pre_tokenizers
        plain = tokenizer.train(TEXTS, kind="bpe", vocab_size=300, min_frequency=1)
        plain.backend.pre_tokenizer = pre_tokenizers.Whitespace()
        with pytest.raises(train.UsageError, match="--whole-word-mask: this BPE tokenizer is not byte-level"):
            train.pretraining_batches(corpus, plain, family, objective, args, seed=0)


def test_train_smoke_run_with_masking_flags_and_resume_check(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    folder, out = write_corpus(tmp_path / "text", n_docs=30), tmp_path / "run"
    flags = {"--whole-word-mask": True, "--ngram": "3", "--mask-rate": "0.3", "--steps": "4", "--save-every": "4",
             "--eval-every": "4", "--show": "0"}
    train.main(base_args(folder, out, **flags))
    saved = torch.load(out / "checkpoints" / "step_0000004" / "training_state.pt", weights_only=True)["args"]
    assert (saved["whole_word_mask"], saved["ngram"], saved["mask_rate"]) == (True, 3, 0.3)
    with pytest.raises(train.UsageError, match=r"--mask-rate 0.15 \(the run used 0.3\)"):
        train.main(base_args(folder, out, **{**flags, "--steps": "6", "--mask-rate": "0.15", "--resume": True}))
