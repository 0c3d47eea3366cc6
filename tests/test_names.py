"""The project's top-level names against the installed distributions.

Python puts the project root first on sys.path (the script's folder, or the current folder for `python -c`
and pytest's rootdir), so a top-level module or package of ours named like an installed one hides it from
everyone in the process: transformers 5.25 imports Hugging Face's `kernels` from every model module, and a
`kernels/` folder of ours broke `import transformers.models.bert.modeling_bert`. These tests fail on any such
name, and prove that transformers' four model modules import and build from the project root.
"""
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def top_level_names(root):
    """The names `import X` finds in root: X.py modules and X/ packages (a folder holding __init__.py)."""
    names = {p.stem for p in root.glob("*.py")}
    return names | {p.parent.name for p in root.glob("*/__init__.py")}


def collisions(names, dists=None):
    """{name: [distributions that also provide it]} for the names an installed distribution provides."""
    dists = md.packages_distributions() if dists is None else dists
    return {n: sorted(dists[n]) for n in sorted(names) if n in dists}


def test_no_top_level_name_is_provided_by_an_installed_distribution():
    names = top_level_names(ROOT)
    assert {"bert", "bert_kernels", "modeling", "train"} <= names              # the listing found the project
    found = collisions(names)
    assert found == {}, (f"top-level names of this project that installed distributions also provide: {found}; "
                         "Python imports ours first and breaks theirs: rename ours")


def test_the_check_finds_a_colliding_name(tmp_path, monkeypatch):
    """A project with a package named like a distribution on sys.path (made here: a folder `kernels/` and a
    fake `hub-kernels` distribution whose top_level.txt says it provides `kernels`) is reported."""
    project = tmp_path / "project"
    (project / "kernels").mkdir(parents=True)
    (project / "kernels" / "__init__.py").write_text("")
    (project / "bert.py").write_text("")
    site = tmp_path / "site"
    info = site / "hub_kernels-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hub-kernels\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("kernels\n")
    monkeypatch.syspath_prepend(str(site))
    found = collisions(top_level_names(project))
    assert "hub-kernels" in found.get("kernels", []) and "bert" not in found   # (Hugging Face's kernels too, if here)
    # and against the real environment: whatever is installed, our own renamed package is not taken
    assert "bert_kernels" not in md.packages_distributions()


@pytest.mark.slow
def test_transformers_model_modules_import_and_build_from_the_project_root():
    """From the project root, as a user's script there would: transformers' BERT, RoBERTa, ALBERT and ELECTRA
    modeling modules import (transformers 5.25 imports `kernels` on the way) and build a tiny model each."""
    code = """
import importlib
import transformers
for family, name in [("bert", "Bert"), ("roberta", "Roberta"), ("albert", "Albert"), ("electra", "Electra")]:
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    config = getattr(transformers, name + "Config")(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=37,
                                                    max_position_embeddings=64)
    model = getattr(module, name + "Model")(config)
    print(family, sum(p.numel() for p in model.parameters()))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = dict(line.split() for line in proc.stdout.splitlines())
    assert set(built) == {"bert", "roberta", "albert", "electra"} and all(int(n) > 0 for n in built.values())
