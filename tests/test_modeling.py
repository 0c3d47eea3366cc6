"""modeling.py: the family contract every model file declares, the FLOP count it gives, and the import rules
it makes possible."""
import ast
import dataclasses
import importlib
import re
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
CLIS = ("train", "finetune", "predict", "bench", "experiment", "gpu_check")      # the tools
SHARED = ("cli", "modeling", "data", "tokenizer")                                 # what the tools share


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
        "                masking={}, position_offset=0, discriminator=None, discriminator_head=None,\n"
        "                tokenizer_vocab_field=False, embedding_projection='never')\n")
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
    with pytest.raises(ValueError, match="the rtd objective has a discriminator"):
        modeling.Family(**{**fields, "pretraining": {**fields["pretraining"], "rtd": bert.BertForMaskedLM}})
    with pytest.raises(ValueError, match="embedding_projection 'sometimes'"):
        modeling.Family(**{**fields, "embedding_projection": "sometimes"})
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


def test_every_top_level_file_is_a_model_file_a_shared_module_or_a_tool():
    """So that a new tool cannot escape the import rules below by being left out of CLIS."""
    assert {p.stem for p in ROOT.glob("*.py")} == {*MODEL_FILES, *SHARED, *CLIS}


def _tool_import_violations(path, name):
    """The modules a tool must not import that it does: another tool, or a model file (tools reach a model
    file only through cli.load_family, i.e. its FAMILY declaration)."""
    return _imports(path) & ((set(CLIS) - {name}) | set(MODEL_FILES))


@pytest.mark.parametrize("name", CLIS)
def test_command_line_tools_import_no_tool_and_no_model_file(name):
    assert not _tool_import_violations(ROOT / f"{name}.py", name)


def test_the_import_rule_catches_a_tool_or_model_import(tmp_path):
    """The rule above can fail: a function-level import of a tool, or a model file imported directly."""
    tool = tmp_path / "newtool.py"
    tool.write_text("import cli\n\ndef flops(config):\n    import bench\n    from electra import gumbel_sample\n")
    assert _tool_import_violations(tool, "newtool") == {"bench", "electra"}
    tool.write_text("import cli\nimport modeling\nfrom data import OBJECTIVES\n")
    assert not _tool_import_violations(tool, "newtool")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_tools_read_the_contract_not_module_attributes(name):
    """No CLI reads a model module's attributes by name with a fallback (getattr(family, "X", default)),
    nor builds class names from strings: what they need is in FAMILY."""
    for tool in (*CLIS, "cli"):
        text = (ROOT / f"{tool}.py").read_text()
        for old in ("PRETRAINING_CLASSES", "DEFAULT_OBJECTIVE", "TOKENIZER_KIND", "MLM_MASKING", "POSITION_OFFSET",
                    "PACKED_SEQUENCES", '+ "Config"', '+ "ForSequenceClassification"', ".capitalize() +"):
            assert old not in text, f"{tool}.py still reads {old}"
        # nor probes a model, a config or a module for what the family should declare: hasattr, or a getattr
        # with a fallback (a plain getattr(config, field) over a list of fields is a read, not a probe)
        probes = r"""hasattr\((?:model|config|config_cls|module)\b|getattr\((?:model|config|module)[\w.]*, *["'][^"']*["'],"""
        assert not re.findall(probes, text), tool
        # nor branches on a family's name (tables keyed by it, e.g. bench.py's transformers classes, are fine)
        assert not re.findall(r"""(?:==|!=|\bin)\s*\(?\s*["'](?:bert|roberta|albert|electra)["']""", text), tool
    module = importlib.import_module(name)
    assert not any(hasattr(module, old) for old in ("PRETRAINING_CLASSES", "DEFAULT_OBJECTIVE", "TOKENIZER_KIND"))


# ----------------------------------------------------------------------------- the FLOP count

def hand_encoder(L, H, I, T):
    return 6 * L * (4 * H * H + 2 * H * I) + 12 * L * T * H


@pytest.mark.parametrize("name, objective", [("bert", "mlm+nsp"), ("roberta", "mlm"), ("albert", "mlm+sop"),
                                             ("albert", "mlm"), ("electra", "rtd"), ("electra", "mlm")])
def test_each_family_counts_its_flops_per_token(name, objective):
    """Family.flops_per_token from the family's declaration, against the terms written out by hand for the
    `mini` preset (where ELECTRA's E = 128 < H = 256, so its projection runs), seq 64, f = 0.15."""
    family = cli.load_family(name)
    c = family.config.from_preset("mini", vocab_size=1000)
    L, H, I, V, T, f = c.num_hidden_layers, c.hidden_size, c.intermediate_size, 1000, 64, 0.15
    if name in ("bert", "roberta"):
        want = hand_encoder(L, H, I, T) + 6 * f * (H * H + H * V)
    else:
        E = c.embedding_size
        Hg = c.generator_config().hidden_size if objective == "rtd" else H
        Ig = c.generator_config().intermediate_size if objective == "rtd" else I
        want = hand_encoder(L, Hg, Ig, T) + 6 * E * Hg + 6 * f * (Hg * E + E * V)  # a projection in both families
        if objective == "rtd":
            want += hand_encoder(L, H, I, T) + 6 * E * H + 6 * (H * H + H)          # the discriminator and its head
    if objective in ("mlm+nsp", "mlm+sop"):
        want += 6 * (H * H + 2 * H) / T
    assert family.flops_per_token(c, T, objective) == pytest.approx(want, rel=1e-12)
    assert family.flops_per_token(c, T, objective, mlm_fraction=0.15) == family.flops_per_token(c, T, objective)


def test_a_projection_counts_where_the_family_declares_it():
    """E = H: ELECTRA has no embeddings_project then, ALBERT's embedding_hidden_mapping_in still runs."""
    import albert
    import electra
    T = 32
    for family, projected in ((albert.FAMILY, True), (electra.FAMILY, False)):
        c = family.config.from_preset("tiny", vocab_size=500, embedding_size=128, hidden_size=128)
        without = dataclasses.replace(family, embedding_projection="never")
        diff = family.flops_per_token(c, T, "mlm") - without.flops_per_token(c, T, "mlm")
        assert diff == (6 * 128 * 128 if projected else 0)
