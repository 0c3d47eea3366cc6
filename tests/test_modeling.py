"""modeling.py: the family contract every model file declares, and the import rules it makes possible."""
import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
import data
import modeling
import tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("bert", "roberta", "albert", "electra")
CLIS = ("train", "finetune", "predict", "bench")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_each_model_file_declares_its_family(name):
    family = cli.load_family(name)
    assert isinstance(family, modeling.Family) and family.name == name == family.config.model_type
    assert set(family.pretraining) <= set(data.OBJECTIVES) and family.default_objective in family.pretraining
    assert family.tokenizer_kind in tokenizer.KINDS
    config = family.config.from_preset("tiny", vocab_size=64)
    for cls in {*family.pretraining.values(), family.masked_lm, family.classification}:
        assert issubclass(cls, torch.nn.Module)
    # the classes the tools build from it do what the contract says
    mlm = family.masked_lm(config)
    assert any(n.startswith(family.mlm_head) for n, _ in mlm.named_parameters()), "mlm_head names no weight"
    assert family.classification.config_class is family.config
    data.Masker(64, 4, {0, 1, 2, 3}, **family.masking)                       # options data.Masker takes
    if family.discriminator is not None:
        disc = family.discriminator(config)
        assert any(n.startswith(family.discriminator_head) for n, _ in disc.named_parameters())
    assert family.packed == (name == "roberta") and family.position_offset == (2 if name == "roberta" else 0)


def test_a_family_without_every_field_fails_at_import(tmp_path):
    """A model file whose FAMILY leaves a field out cannot even be imported: the tools never fall back to a default."""
    (tmp_path / "halfdone.py").write_text(
        "from modeling import Family\n"
        "from bert import BertConfig, BertForMaskedLM, BertForSequenceClassification\n"
        "FAMILY = Family(name='bert', config=BertConfig, pretraining={'mlm': BertForMaskedLM},\n"
        "                default_objective='mlm', masked_lm=BertForMaskedLM, mlm_head='cls.predictions.',\n"
        "                classification=BertForSequenceClassification, tokenizer_kind='wordpiece',\n"
        "                masking={}, position_offset=0, discriminator=None, discriminator_head=None)\n")
    run = subprocess.run([sys.executable, "-c", "import halfdone"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert run.returncode != 0
    assert "TypeError" in run.stderr and "missing 1 required positional argument: 'packed'" in run.stderr


def test_family_checks_its_own_consistency():
    import bert
    fields = {f.name: getattr(bert.FAMILY, f.name) for f in dataclasses.fields(modeling.Family)}
    with pytest.raises(ValueError, match="default_objective 'rtd' is not one of"):
        modeling.Family(**{**fields, "default_objective": "rtd"})
    with pytest.raises(ValueError, match="tokenizer_kind 'sentencepiece'"):
        modeling.Family(**{**fields, "tokenizer_kind": "sentencepiece"})
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        modeling.Family(**{**fields, "name": "bort"})
    with pytest.raises(ValueError, match="discriminator and discriminator_head together"):
        modeling.Family(**{**fields, "discriminator_head": "x."})
    with pytest.raises(cli.UsageError, match="unknown model family 'gpt'"):
        cli.load_family("gpt")


def _imports(path):
    """The top-level modules a file imports, anywhere in it (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_files_import_torch_kernels_and_modeling_only(name):
    """One model file is a complete family on top of torch, bert_kernels and modeling.py: never data.py, a
    tokenizer, a CLI or another model file."""
    stdlib = set(sys.stdlib_module_names)
    assert _imports(ROOT / f"{name}.py") - stdlib <= {"torch", "bert_kernels", "modeling"}
    assert _imports(ROOT / "modeling.py") - stdlib <= {"torch", "safetensors"}


@pytest.mark.parametrize("name", CLIS)
def test_command_line_tools_never_import_each_other(name):
    assert not _imports(ROOT / f"{name}.py") & (set(CLIS) - {name})


@pytest.mark.parametrize("name", MODEL_FILES)
def test_tools_read_the_contract_not_module_attributes(name):
    """No CLI reads a model module's attributes by name with a fallback (getattr(family, "X", default)),
    nor builds class names from strings: what they need is in FAMILY."""
    for tool in (*CLIS, "cli"):
        text = (ROOT / f"{tool}.py").read_text()
        for old in ("PRETRAINING_CLASSES", "DEFAULT_OBJECTIVE", "TOKENIZER_KIND", "MLM_MASKING", "POSITION_OFFSET",
                    "PACKED_SEQUENCES", '+ "Config"', '+ "ForSequenceClassification"'):
            assert old not in text, f"{tool}.py still reads {old}"
    module = importlib.import_module(name)
    assert not any(hasattr(module, old) for old in ("PRETRAINING_CLASSES", "DEFAULT_OBJECTIVE", "TOKENIZER_KIND"))
