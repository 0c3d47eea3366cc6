"""Safe loading and unusual input: malicious pickles are refused without running, every corrupt or
mismatched checkpoint file is one clear error that names it, and text files in other encodings are
read as asked (or refused with the byte offset and the fix).

The malicious files are real: each payload is first shown to run when unpickled without restrictions
(it writes a marker file), then our loaders must refuse the same file and leave no marker.
"""
import importlib
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data
import modeling
import tokenizer as tk

FAMILIES = ("bert", "roberta", "albert", "electra")
PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra"}


def masked_lm(family):
    """(module, its ...ForMaskedLM class, a tiny config)."""
    module = importlib.import_module(family)
    config = getattr(module, PREFIX[family] + "Config").from_preset(
        "tiny", vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=1)
    return module, getattr(module, PREFIX[family] + "ForMaskedLM"), config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> a directory holding a tiny saved ...ForMaskedLM (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("checkpoints")
    for family in FAMILIES:
        _, cls, config = masked_lm(family)
        cls(config).save_pretrained(root / family)
    return root


def copy_checkpoint(checkpoints, family, to):
    shutil.copytree(checkpoints / family, to)
    return to


def to_pytorch_bin(ckpt):
    """Replace model.safetensors with the same weights as pytorch_model.bin (torch.save's zip format)."""
    from safetensors.torch import load_file
    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    return ckpt / "pytorch_model.bin"


# ----------------------------------------------------------------------------- malicious pickles

def write_marker(path):
    """The payload's own function: proof that unpickling ran code."""
    Path(path).write_text("pwned")


class Payload:
    """An object whose unpickling calls `how` to write `marker`."""

    def __init__(self, how, marker):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {shlex.quote(self.marker)}",)
        if self.how == "exec":
            return exec, (f"open({self.marker!r}, 'w').write('pwned')",)
        return write_marker, (self.marker,)


def write_malicious(file, how, fmt, marker):
    """A pickle that would write `marker` when loaded, in one of the formats a .bin/.pt file comes in."""
    obj = {"embeddings.word_embeddings.weight": Payload(how, marker), "step": 3}
    if fmt == "torch.save":
        torch.save(obj, file)
    elif fmt == "torch.save legacy":
        torch.save(obj, file, _use_new_zipfile_serialization=False)
    else:                                                        # a bare pickle, protocol 2 or 4
        file.write_bytes(pickle.dumps(obj, protocol=int(fmt[-1])))


def assert_payload_is_live(file, fmt, marker):
    """Unpickled without restrictions, the file does run its payload (so the refusal below means something)."""
    if fmt.startswith("pickle"):
        pickle.loads(file.read_bytes())
    else:
        torch.load(file, weights_only=False)
    assert marker.exists(), "the test payload did not run: the test would prove nothing"
    marker.unlink()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")     # torch's, for the bare protocol-4 pickle
@pytest.mark.parametrize("how", ["os.system", "exec", "own function"])
@pytest.mark.parametrize("fmt", ["torch.save", "torch.save legacy", "pickle protocol 2", "pickle protocol 4"])
def test_malicious_pytorch_model_bin_is_refused_and_never_run(checkpoints, tmp_path, how, fmt):
    ckpt = copy_checkpoint(checkpoints, "bert", tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    write_malicious(ckpt / "pytorch_model.bin", how, fmt, marker)
    assert_payload_is_live(ckpt / "pytorch_model.bin", fmt, marker)

    import bert
    with pytest.raises(modeling.CheckpointError) as err:
        bert.BertForMaskedLM.from_pretrained(ckpt)
    message = str(err.value)
    assert str(ckpt / "pytorch_model.bin") in message and "is refused" in message
    assert "run code" in message                                # why: the pickle is not plain tensors
    if fmt != "pickle protocol 4":                               # torch names the callable it refused
        assert {"os.system": "system", "exec": "exec", "own function": "write_marker"}[how] in message
    assert not marker.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_refuses_a_malicious_shard(checkpoints, tmp_path, family):
    """The loading code is copied into each model file: each refuses, here through a sharded checkpoint."""
    module, cls, _ = masked_lm(family)
    ckpt = copy_checkpoint(checkpoints, family, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    write_malicious(ckpt / "pytorch_model-00001-of-00001.bin", "own function", "torch.save", marker)
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"embeddings.word_embeddings.weight": "pytorch_model-00001-of-00001.bin"}}))
    with pytest.raises(modeling.CheckpointError, match="pytorch_model-00001-of-00001.bin is refused.*write_marker"):
        cls.from_pretrained(ckpt)
    assert not marker.exists()


def test_malicious_training_state_stops_resume_without_running(tmp_path, monkeypatch):
    """train.py --resume reads training_state.pt with torch.load(weights_only=True): a crafted one
    stops the run with an error naming the file, and its payload never runs."""
    train = importlib.import_module("train")
    from test_train import base_args, write_corpus
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    corpus, out = write_corpus(tmp_path / "text", n_docs=20), tmp_path / "run"
    common = {"--steps": "2", "--save-every": "2", "--eval-every": "2", "--show": "0"}
    train.main(base_args(corpus, out, **common))
    state_file = train.latest_checkpoint(out) / "training_state.pt"
    marker = tmp_path / "pwned"
    write_malicious(state_file, "own function", "torch.save", marker)
    assert_payload_is_live(state_file, "torch.save", marker)
    with pytest.raises(train.UsageError, match="training_state.pt is refused: loading it would call .*write_marker"):
        train.main(base_args(corpus, out, **common, **{"--resume": True}))
    assert not marker.exists()


# ----------------------------------------------------------------------------- corrupt checkpoint files

def _truncate(file, keep=0.5):
    file.write_bytes(file.read_bytes()[:int(len(file.read_bytes()) * keep)])


def _edit_config(ckpt, drop=(), **changes):
    config = {k: v for k, v in json.loads((ckpt / "config.json").read_text()).items() if k not in drop}
    (ckpt / "config.json").write_text(json.dumps({**config, **changes}))


CORRUPTIONS = {  # name -> (corrupt(ckpt), the file the message names, what it says)
    "safetensors truncated": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors",
                              "corrupt or truncated"),
    "safetensors garbage": (lambda c: (c / "model.safetensors").write_bytes(os.urandom(4096)), "model.safetensors",
                            "corrupt or truncated"),
    "safetensors empty": (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors",
                          "corrupt or truncated"),
    "bin truncated": (lambda c: _truncate(to_pytorch_bin(c)), "pytorch_model.bin", "corrupt or truncated"),
    "bin empty": (lambda c: to_pytorch_bin(c).write_bytes(b""), "pytorch_model.bin", "corrupt or truncated"),
    "bin text": (lambda c: to_pytorch_bin(c).write_bytes(b"this is not a pickle"), "pytorch_model.bin",
                 "corrupt or truncated"),
    "bin garbage": (lambda c: to_pytorch_bin(c).write_bytes(b"\x80\x02" + bytes(range(40, 120))),
                    "pytorch_model.bin", "is refused"),
    "bin holds a list": (lambda c: torch.save([torch.zeros(2)], to_pytorch_bin(c)), "pytorch_model.bin",
                         "holds a list, not a state dict"),
    "config not JSON": (lambda c: (c / "config.json").write_text("{not json"), "config.json", "not valid JSON"),
    "config not UTF-8": (lambda c: (c / "config.json").write_bytes(b'{"hidden_act": "g\xe9lu"}'), "config.json",
                         "not valid JSON"),
    "config a list": (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json", "holds a JSON list"),
    "config lacks a size": (lambda c: _edit_config(c, drop=["hidden_size"]), "config.json",
                            "lacks hidden_size"),
    "config wrong type": (lambda c: _edit_config(c, hidden_size="16"), "config.json",
                          "hidden_size should be int, not '16'"),
    "config a bool": (lambda c: _edit_config(c, num_hidden_layers=True), "config.json",
                      "num_hidden_layers should be int, not True"),
    "config a float size": (lambda c: _edit_config(c, intermediate_size=32.5), "config.json",
                            "intermediate_size should be int, not 32.5"),
    "config zero heads": (lambda c: _edit_config(c, num_attention_heads=0), "config.json",
                          "num_attention_heads should be positive"),
    "config bad dropout": (lambda c: _edit_config(c, attention_probs_dropout_prob="0.1"), "config.json",
                           "attention_probs_dropout_prob should be float"),
    "index not JSON": (lambda c: (c.joinpath("model.safetensors").rename(c / "model-1.safetensors"),
                                  c.joinpath("model.safetensors.index.json").write_text("{")),
                       "model.safetensors.index.json", "not a shard index"),
    "index names a missing shard": (lambda c: (c.joinpath("model.safetensors").unlink(),
                                               c.joinpath("model.safetensors.index.json").write_text(
                                                   json.dumps({"weight_map": {"a": "model-2.safetensors"}}))),
                                    "model.safetensors.index.json", "model-2.safetensors"),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_one_clear_error(checkpoints, tmp_path, family, case):
    module, cls, _ = masked_lm(family)
    ckpt = copy_checkpoint(checkpoints, family, tmp_path / "ckpt")
    corrupt, file, says = CORRUPTIONS[case]
    corrupt(ckpt)
    with pytest.raises(modeling.CheckpointError) as err:
        cls.from_pretrained(ckpt)
    assert isinstance(err.value, ValueError)
    assert str(ckpt / file) in str(err.value) and says in str(err.value), str(err.value)


def test_wrong_shapes_and_missing_weights_are_checkpoint_errors(checkpoints, tmp_path):
    import bert
    with pytest.raises(modeling.CheckpointError, match="(?s)wrong shape.*word_embeddings"):
        bert.BertForMaskedLM.from_pretrained(checkpoints / "bert", vocab_size=41)
    with pytest.raises(modeling.CheckpointError, match="(?s)does not match BertForPreTraining.*seq_relationship"):
        bert.BertForPreTraining.from_pretrained(checkpoints / "bert")


@pytest.mark.parametrize("saved, loader", [(a, b) for a in FAMILIES for b in FAMILIES if a != b])
@pytest.mark.parametrize("strict", [True, False])
def test_another_familys_checkpoint_is_refused(checkpoints, saved, loader, strict):
    """RoBERTa into BertForMaskedLM (and every other pair): refused, strict=False included, naming both."""
    module, cls, _ = masked_lm(loader)
    with pytest.raises(modeling.CheckpointError) as err:
        cls.from_pretrained(checkpoints / saved, strict=strict)
    message = str(err.value)
    assert str(checkpoints / saved / "config.json") in message and cls.__name__ in message
    assert f"model_type {saved!r}, not {loader!r}" in message and f"{saved}.py" in message


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.floats(0.0, 0.999), fmt=st.sampled_from(["safetensors", "bin"]))
def test_truncated_anywhere_is_a_checkpoint_error_30_examples(checkpoints, tmp_path_factory, keep, fmt):
    """A weights file cut at any byte (a download or copy that stopped) is a CheckpointError, never a
    crash of another kind and never a model."""
    import bert
    ckpt = copy_checkpoint(checkpoints, "bert", tmp_path_factory.mktemp("t") / "ckpt")
    file = ckpt / "model.safetensors" if fmt == "safetensors" else to_pytorch_bin(ckpt)
    _truncate(file, keep)
    with pytest.raises(modeling.CheckpointError, match=file.name):
        bert.BertForMaskedLM.from_pretrained(ckpt)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupted_header_bytes_load_or_fail_clearly_40_examples(checkpoints, tmp_path_factory, edits):
    """Bytes overwritten in the safetensors header (its first ~400 bytes: sizes, names, dtypes, shapes):
    a CheckpointError (or, when the edit only changed tensor values, a model), nothing else."""
    import bert
    ckpt = copy_checkpoint(checkpoints, "bert", tmp_path_factory.mktemp("h") / "ckpt")
    blob = bytearray((ckpt / "model.safetensors").read_bytes())
    for at, value in edits:
        blob[at] = value
    (ckpt / "model.safetensors").write_bytes(bytes(blob))
    try:
        model = bert.BertForMaskedLM.from_pretrained(ckpt)
    except modeling.CheckpointError as e:
        assert "model.safetensors" in str(e) or "does not match" in str(e) or "wrong shape" in str(e)
    else:
        assert isinstance(model, bert.BertForMaskedLM)


# ----------------------------------------------------------------------------- tokenizer files

def test_corrupt_tokenizer_files_name_the_file(tmp_path):
    tok = tk.train(["Some words to train on.", "And some more words here."] * 5, "wordpiece", vocab_size=60,
                   min_frequency=1)
    tok.save(tmp_path)
    text = (tmp_path / "tokenizer.json").read_text()
    (tmp_path / "tokenizer.json").write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match="tokenizer.json is not a tokenizer"):
        tk.load(tmp_path)
    tok.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        tk.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[]")
    with pytest.raises(ValueError, match="tokenizer_config.json holds a JSON list"):
        tk.load(tmp_path)


# ----------------------------------------------------------------------------- encodings

LATIN1 = "Caf\u00e9 cr\u00e8me. Na\u00efve text.\n\nSecond document here.\n"


@pytest.fixture
def latin1_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(LATIN1.encode("latin-1"))
    return path


def test_strict_utf8_names_file_offset_and_the_fix(latin1_file):
    with pytest.raises(data.DataError) as err:
        data.resolve_data([str(latin1_file)])
    message = str(err.value)
    assert str(latin1_file.resolve()) in message and "byte offset 3" in message and "0xe9" in message
    assert "--encoding latin-1" in message and "--encoding-errors replace" in message
    with pytest.raises(data.DataError, match="byte offset 3"):  # read_documents alone says the same
        list(data.read_documents([latin1_file]))


def test_other_encodings_and_error_modes(latin1_file, tmp_path):
    files = data.resolve_data([str(latin1_file)], encoding="latin-1")
    assert list(data.read_documents(files, encoding="latin-1")) == [
        ["Caf\u00e9 cr\u00e8me.", "Na\u00efve text."], ["Second document here."]]
    assert data.resolve_data([str(latin1_file)], errors="replace") == files
    assert list(data.read_documents(files, errors="replace"))[0] == ["Caf\ufffd cr\ufffdme.", "Na\ufffdve text."]
    assert list(data.read_documents(files, errors="ignore"))[0] == ["Caf crme.", "Nave text."]
    utf16 = tmp_path / "utf16.txt"                              # NUL bytes are text in UTF-16, not a binary file
    utf16.write_text(LATIN1, encoding="utf-16")
    assert list(data.read_documents(data.resolve_data([str(utf16)], encoding="utf-16"), encoding="utf-16")) == \
        list(data.read_documents(files, encoding="latin-1"))
    with pytest.raises(data.DataError, match="binary file"):   # ... but they are in UTF-8
        data.resolve_data([str(utf16)])


def test_bad_encoding_arguments(latin1_file):
    with pytest.raises(data.DataError, match="unknown text encoding 'latin-9000'"):
        data.resolve_data([str(latin1_file)], encoding="latin-9000")
    with pytest.raises(data.DataError, match="errors='surrogateescape'.*strict, replace, ignore"):
        data.read_documents([latin1_file], errors="surrogateescape").__next__()
    with pytest.raises(data.DataError, match="built-in corpus is UTF-8"):
        data.resolve_data([], encoding="latin-1")


def test_cache_keys_differ_by_decoding(latin1_file, tmp_path):
    tok = tk.train([LATIN1] * 3, "bpe", vocab_size=300, min_frequency=1)   # byte-level: decodes what it read
    builds = {(enc, err): data.build_cache([latin1_file], tok, tmp_path / "cache", encoding=enc, errors=err)[0]
              for enc, err in (("latin-1", "strict"), ("latin1", "strict"), ("utf-8", "replace"))}
    folders = {k: v.folder for k, v in builds.items()}
    assert folders[("latin-1", "strict")] == folders[("latin1", "strict")]          # one codec, two names
    assert folders[("latin-1", "strict")] != folders[("utf-8", "replace")]
    assert tok.decode(builds[("latin-1", "strict")].tokens).startswith("Café crème")
    assert tok.decode(builds[("utf-8", "replace")].tokens).startswith("Caf\ufffd cr\ufffdme")
    # UTF-8/strict keys are as they were before decoding joined the key, so existing caches stay valid
    assert data.files_fingerprint([latin1_file]) == data.files_fingerprint([latin1_file], "UTF8", "strict")
    assert data.files_fingerprint([latin1_file], "latin-1") != data.files_fingerprint([latin1_file])


def test_tokenizer_trains_on_files_in_another_encoding(latin1_file):
    with pytest.raises(ValueError, match="not all UTF-8.*latin1.txt.*errors='replace'"):
        tk.train([latin1_file], "wordpiece", vocab_size=60, min_frequency=1)
    tok = tk.train([latin1_file], "wordpiece", vocab_size=60, min_frequency=1, lowercase=False, encoding="latin-1")
    assert "Café" in tok.backend.get_vocab() or "é" in tok.backend.get_vocab()
    tok = tk.train([latin1_file], "bpe", vocab_size=300, min_frequency=1, errors="replace")
    assert tok.decode(tok.encode("Caf\ufffd")) == "Caf\ufffd"
