"""Tests for tokenizer.py: training each kind, special-token templates, batching, save/load, and parity with
`transformers` for our saved tokenizers and for Hugging Face checkpoints built here (nothing is downloaded)."""
import json
import random

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import processors

import tokenizer as tk

TEXTS = ["The cats sat on the mat, said Ann.", "Naïve café owners ÜBER-react!", "kalo tenra   dar is zor?"]
PAIRS = ["A second segment here.", "Short", "velsu anlo, and the end"]


def make_corpus(n=400, seed=0):
    """English-ish sentences from a Zipf-weighted lexicon of made-up words, plus a few real and accented ones."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ten", "ra", "su", "vel", "on", "dar", "is", "qu", "ep", "zor", "an", "bel",
                 "tri", "ux", "no", "fe", "gal"]
    lexicon = ["the", "and", "of", "cat", "sat", "mat", "café", "naïve", "Über"]
    lexicon += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(600)]
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]
    return [" ".join(rng.choices(lexicon, weights, k=rng.randint(4, 14))).capitalize()
            + rng.choice([".", "!", "?", ", said Ann."]) for _ in range(n)]


CORPUS = make_corpus()
VOCAB_SIZE = 400


@pytest.fixture(scope="module", params=tk.KINDS)
def trained(request):
    return tk.train(CORPUS, request.param, vocab_size=VOCAB_SIZE)


def test_train_special_tokens_and_vocab_size(trained):
    kind = trained.kind
    assert [trained.id_to_token(i) for i in range(5)] == tk.SPECIAL_TOKENS[kind]
    assert trained.special_ids == [0, 1, 2, 3, 4]
    for role in ("pad", "unk", "cls", "sep", "mask"):
        assert trained.id_to_token(getattr(trained, f"{role}_id")) == getattr(trained, f"{role}_token")
    assert trained.token_to_id(tk.SPECIAL_TOKENS[kind][2]) == 2 and trained.token_to_id("not-a-token-xyz") is None
    # WordPiece and BPE merge until the vocabulary is full (this corpus has merges to spare); Unigram prunes a
    # seed vocabulary down and may stop below the target. None goes over.
    if kind == "unigram":
        assert 100 < trained.vocab_size <= VOCAB_SIZE
    else:
        assert trained.vocab_size == VOCAB_SIZE
    assert len(trained) == trained.vocab_size and kind in repr(trained)


def test_train_from_files_equals_train_from_texts(tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text("\n".join(CORPUS[:200]) + "\n", encoding="utf-8")
    files[1].write_text("\n".join(CORPUS[200:]) + "\n", encoding="utf-8")
    from_texts = set(tk.train(iter(CORPUS), "wordpiece", vocab_size=VOCAB_SIZE).backend.get_vocab())  # a generator
    for source in (files, [str(f) for f in files]):
        from_files = set(tk.train(source, "wordpiece", vocab_size=VOCAB_SIZE).backend.get_vocab())
        # WordPiece training breaks frequency ties in hash order, so the last merges (and ids) may differ
        assert len(from_files) == VOCAB_SIZE and len(from_files & from_texts) > 0.9 * VOCAB_SIZE
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tk.train([files[0], tmp_path / "missing.txt"], "wordpiece")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tk.train(str(tmp_path / "missing.txt"), "wordpiece")
    assert tk.train(files[0], "bpe", vocab_size=300).vocab_size == 300  # one path on its own


def test_lowercase_defaults():
    assert tk.train(CORPUS, "wordpiece", vocab_size=300).lowercase
    assert tk.train(CORPUS, "unigram", vocab_size=300).lowercase
    assert not tk.train(CORPUS, "bpe", vocab_size=300).lowercase  # RoBERTa is cased
    cased = tk.train(CORPUS, "wordpiece", vocab_size=300, lowercase=False)
    assert not cased.lowercase and cased.encode("The") != cased.encode("the")


def test_encode_adds_the_family_specials(trained):
    bare = trained.encode(TEXTS[0], add_special_tokens=False)
    assert len(bare) > 3 and not set(bare) & set(trained.special_ids)
    ids = trained.encode(TEXTS[0])
    assert ids == [trained.cls_id] + bare + [trained.sep_id]
    assert trained.num_special_tokens() == 2
    assert trained.decode(ids) == trained.decode(bare)
    assert trained.decode(ids, skip_special_tokens=False).startswith(trained.cls_token)
    if trained.kind == "bpe":  # byte-level: everything round-trips, case and accents included
        assert trained.decode(ids) == TEXTS[0]


def test_pair_encoding_template(trained):
    a = trained.encode(TEXTS[0], add_special_tokens=False)
    b = trained.encode(PAIRS[0], add_special_tokens=False)
    cls, sep = trained.cls_id, trained.sep_id
    encoding = trained.backend.encode(TEXTS[0], PAIRS[0])
    if trained.kind == "bpe":  # RoBERTa: <s> A </s></s> B </s>, one segment type
        assert encoding.ids == [cls] + a + [sep, sep] + b + [sep]
        assert encoding.type_ids == [0] * len(encoding.ids)
        assert trained.num_special_tokens(pair=True) == 4
    else:  # BERT / ALBERT: [CLS] A [SEP] B [SEP]
        assert encoding.ids == [cls] + a + [sep] + b + [sep]
        assert encoding.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert trained.num_special_tokens(pair=True) == 3
    assert trained.encode(TEXTS[0], PAIRS[0]) == encoding.ids
    assert len(encoding.ids) == len(a) + len(b) + trained.num_special_tokens(pair=True)


def test_with_special_tokens_matches_encode(trained):
    segments_a = trained.tokenize_batch(TEXTS)
    segments_b = trained.tokenize_batch(PAIRS)
    assert segments_a == [trained.encode(t, add_special_tokens=False) for t in TEXTS]
    for text, pair, a, b in zip(TEXTS, PAIRS, segments_a, segments_b):
        encoding = trained.backend.encode(text)
        assert trained.with_special_tokens(a) == (encoding.ids, encoding.type_ids)
        encoding = trained.backend.encode(text, pair)
        assert trained.with_special_tokens(a, b) == (encoding.ids, encoding.type_ids)


def test_encode_batch(trained):
    plain = trained.encode_batch(TEXTS)
    assert plain["input_ids"] == [trained.encode(t) for t in TEXTS]
    assert [len(m) for m in plain["attention_mask"]] == [len(i) for i in plain["input_ids"]]
    assert all(all(m) for m in plain["attention_mask"])

    padded = trained.encode_batch(TEXTS, PAIRS, padding=True)
    longest = max(len(trained.encode(t, p)) for t, p in zip(TEXTS, PAIRS))
    for text, pair, ids, mask, types in zip(TEXTS, PAIRS, *padded.values()):
        real = trained.encode(text, pair)
        assert len(ids) == longest and ids == real + [trained.pad_id] * (longest - len(real))
        assert mask == [1] * len(real) + [0] * (longest - len(real))
        assert types[:len(real)] == trained.with_special_tokens(*trained.tokenize_batch([text, pair]))[1]

    short = trained.encode_batch(TEXTS, PAIRS, max_length=9, return_tensors="pt")
    assert all(t.dtype == torch.long and t.shape == (3, 9) for t in short.values())
    for row in short["input_ids"].tolist():  # truncated longest-first, specials kept
        assert row[0] == trained.cls_id and row[-1] == trained.sep_id
        assert row.count(trained.sep_id) == trained.num_special_tokens(pair=True) - 1

    fixed = trained.encode_batch(TEXTS[1:2], max_length=40, padding="max_length")
    assert len(fixed["input_ids"][0]) == 40 and fixed["input_ids"][0][-1] == trained.pad_id
    # the per-call padding/truncation is switched off again
    assert trained.backend.padding is None and trained.backend.truncation is None
    assert trained.encode(TEXTS[0]) == plain["input_ids"][0]
    with pytest.raises(ValueError, match="max_length"):
        trained.encode_batch(TEXTS, padding="max_length")


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    for source in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.json", str(tmp_path / "tok")):
        loaded = tk.load(source)
        assert loaded.kind == trained.kind and loaded.vocab_size == trained.vocab_size
        assert loaded.special_ids == trained.special_ids
        assert [getattr(loaded, f"{r}_id") for r in ("pad", "unk", "cls", "sep", "mask")] == list(
            (trained.pad_id, trained.unk_id, trained.cls_id, trained.sep_id, trained.mask_id))
        assert loaded.encode_batch(TEXTS, PAIRS) == trained.encode_batch(TEXTS, PAIRS)
        assert loaded.tokenize_batch(CORPUS[:50]) == trained.tokenize_batch(CORPUS[:50])
    assert tk.load(tmp_path / "tok").backend.to_str() == trained.backend.to_str()  # data.py keys its cache on this


@pytest.mark.parametrize("kind,lowercase", [("wordpiece", None), ("bpe", None), ("unigram", None),
                                            ("wordpiece", False), ("bpe", True), ("unigram", False)])
def test_saved_tokenizer_reads_in_transformers(kind, lowercase, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = tk.train(CORPUS, kind, vocab_size=VOCAB_SIZE, lowercase=lowercase)
    ours.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # a lowercased byte-level BPE is not what RobertaTokenizer builds, so the generic class is named
    expected_class = "PreTrainedTokenizerFast" if (kind, lowercase) == ("bpe", True) else tk.HF_CLASS[kind]
    assert config["tokenizer_class"] == expected_class and config["do_lower_case"] == ours.lowercase
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    generic = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for hf in (auto, generic):
        assert len(hf) == ours.vocab_size
        for text, pair in zip(TEXTS, PAIRS):
            assert hf(text)["input_ids"] == ours.encode(text)
            assert hf(text, pair)["input_ids"] == ours.encode(text, pair)
            assert hf.decode(ours.encode(text), skip_special_tokens=True) == ours.decode(ours.encode(text))
    assert auto.mask_token_id == ours.mask_id and auto.pad_token_id == ours.pad_id
    auto.save_pretrained(tmp_path / "resaved")  # and back: a checkpoint written by transformers loads here
    again = tk.load(tmp_path / "resaved")
    assert again.kind == kind and again.encode_batch(TEXTS, PAIRS) == ours.encode_batch(TEXTS, PAIRS)
    if kind != "bpe":
        want = auto(TEXTS[0], PAIRS[0], return_token_type_ids=True)["token_type_ids"]
        assert want == ours.encode_batch([TEXTS[0]], [PAIRS[0]])["token_type_ids"][0]


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "said", "ann", "##s",
              ".", ",", "!", "?", "-", "a", "c", "f", "e", "n", "i", "v", "##a", "##f", "##e", "##i", "##v", "##n",
              "caf", "na", "uber", "react", "Uber", "The", "Na", "##ive", "##ïve", "##é", "é", "ï", "ü", "Ü",
              "##ber"]
HF_TEXTS = TEXTS + ["Café [MASK] the cats!", "the UBER cat [SEP] said"]


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_load_hf_bert_checkpoint(tmp_path, do_lower_case):
    transformers = pytest.importorskip("transformers")
    vocab_dir, saved_dir = tmp_path / "vocab_only", tmp_path / "saved"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    if not do_lower_case:
        (vocab_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    hf = transformers.BertTokenizerFast.from_pretrained(vocab_dir)
    hf.save_pretrained(saved_dir)  # the tokenizer.json form
    assert (saved_dir / "tokenizer.json").is_file() and not (saved_dir / "vocab.txt").exists()
    for source in (vocab_dir, vocab_dir / "vocab.txt", saved_dir, saved_dir / "tokenizer.json"):
        ours = tk.load(source)
        assert ours.kind == "wordpiece" and ours.lowercase == do_lower_case
        assert ours.vocab_size == len(hf) == len(BERT_VOCAB)
        assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id, ours.unk_id) == (2, 3, 0, 4, 1)
        for text, pair in zip(HF_TEXTS, PAIRS + PAIRS):
            assert ours.encode(text) == hf(text)["input_ids"]
            want = hf(text, pair)
            got = ours.encode_batch([text], [pair])
            assert got["input_ids"][0] == want["input_ids"]
            assert got["token_type_ids"][0] == want["token_type_ids"]
        ids = hf(HF_TEXTS[3])["input_ids"]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_load_older_post_processors(tmp_path):
    """Older converted checkpoints use BertProcessing / RobertaProcessing instead of TemplateProcessing."""
    for kind in ("wordpiece", "unigram"):
        trained = tk.train(CORPUS, kind, vocab_size=300)
        backend = Backend.from_str(trained.backend.to_str())
        backend.post_processor = processors.BertProcessing((trained.sep_token, trained.sep_id),
                                                           (trained.cls_token, trained.cls_id))
        backend.save(str(tmp_path / "tokenizer.json"))
        loaded = tk.load(tmp_path / "tokenizer.json")
        assert loaded.encode_batch(TEXTS, PAIRS) == trained.encode_batch(TEXTS, PAIRS)
    backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")  # no specials at all
    backend.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="post-processor"):
        tk.load(tmp_path / "tokenizer.json")


def test_load_ignores_baked_in_padding_and_truncation(tmp_path):
    trained = tk.train(CORPUS, "wordpiece", vocab_size=300)
    backend = Backend.from_str(trained.backend.to_str())
    backend.enable_padding(pad_id=trained.pad_id, pad_token=trained.pad_token, length=64)
    backend.enable_truncation(max_length=6)
    backend.save(str(tmp_path / "tokenizer.json"))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["padding"] is not None
    loaded = tk.load(tmp_path)
    assert loaded.backend.padding is None and loaded.backend.truncation is None
    assert loaded.encode(TEXTS[0]) == trained.encode(TEXTS[0]) and len(loaded.encode(TEXTS[0])) > 6
    assert loaded.tokenize_batch(TEXTS) == trained.tokenize_batch(TEXTS)


def test_special_token_names_from_config(tmp_path):
    """special_tokens_map.json / tokenizer_config.json override the names found by convention."""
    trained = tk.train(CORPUS, "wordpiece", vocab_size=300)
    trained.save(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": {"content": "[UNK]"}}))
    assert tk.load(tmp_path).mask_id == trained.unk_id


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="'sentencepiece'.*wordpiece.*bpe.*unigram"):
        tk.train(CORPUS, "sentencepiece")
    with pytest.raises(FileNotFoundError, match="nowhere.*tokenizer.json.*vocab.txt"):
        tk.load(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*without tokenizer.json or vocab.txt"):
        tk.load(tmp_path)
    with pytest.raises(ValueError, match="no texts"):
        tk.train([], "bpe")
    (tmp_path / "vocab.txt").write_text("the\ncat\n[UNK]\n")
    with pytest.raises(ValueError, match="no pad token"):
        tk.load(tmp_path)
