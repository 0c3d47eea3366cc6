"""Checkpoints written by an older version of this code still load, and give the outputs they gave then.

tests/fixtures/checkpoints/ holds tiny checkpoints of every family (a few KB each), written by
`python tests/test_fixtures.py --write DIR` at commit a994aed, before the model files' shared
machinery moved into modeling.py; each directory's expected.safetensors holds the inputs and the
outputs that code computed. The test loads each checkpoint with today's code and compares: a
change of parameter names, of config.json's reading, or of the computation shows here. Never
regenerate them to make this test pass: they are the record of the old format.
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
SIZES = dict(vocab_size=32, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
             max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# name -> (module, class, config overrides, preset); every family's pretraining and classification heads,
# an efficient-BERT (`crammed`) config that transformers cannot load, and an ELECTRA run directory
CASES = {
    "bert-pretraining":       ("bert", "BertForPreTraining", {}, "tiny"),
    "bert-crammed-mlm":       ("bert", "BertForMaskedLM", {"intermediate_size": 8}, "crammed-tiny"),
    "bert-classifier":        ("bert", "BertForSequenceClassification", {"num_labels": 3}, "tiny"),
    "roberta-mlm":            ("roberta", "RobertaForMaskedLM", {"pad_token_id": 1}, "tiny"),
    "roberta-classifier":     ("roberta", "RobertaForSequenceClassification", {"pad_token_id": 1}, "tiny"),
    "albert-pretraining":     ("albert", "AlbertForPreTraining", {"embedding_size": 4}, "base"),
    "albert-classifier":      ("albert", "AlbertForSequenceClassification", {"embedding_size": 4, "num_labels": 1},
                               "base"),
    "electra-run":            ("electra", "Electra", {"embedding_size": 4, "generator_size": 0.5}, "tiny"),
    "electra-classifier":     ("electra", "ElectraForSequenceClassification", {"embedding_size": 4}, "tiny"),
}

CONFIGS = {"bert": "BertConfig", "roberta": "RobertaConfig", "albert": "AlbertConfig", "electra": "ElectraConfig"}


def inputs(pad_id):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, SIZES["vocab_size"], (3, 11), generator=g)
    mask = torch.arange(11)[None] < torch.tensor([[11], [6], [2]])          # (3, 11): padded rows
    ids[~mask] = pad_id
    types = (torch.arange(11)[None] >= 4).long() * mask
    return ids, mask, types


def outputs(model, module, ids, mask, types):
    """Every output worth comparing: the logits of each head, and the encoder's hidden states."""
    types = types.clamp(max=model.config.type_vocab_size - 1)
    with torch.no_grad():
        if module == "electra" and hasattr(model, "generator"):
            return {"discriminator": model.discriminator(ids, mask, types).logits,
                    "generator": model.generator(ids, mask, types).logits,
                    "hidden": model.discriminator.electra(ids, mask, types)}
        out = model(ids, mask, types)
        result = {"logits": out.logits}
        if len(out) > 3 and out[3] is not None:
            result["sentence_logits"] = out[3]                              # NSP / SOP
        base = getattr(model, model.base_model_prefix)
        result["hidden"] = base(ids, mask, types)
        return result


def write(directory):
    """Write every case with the code as it is now (run this only to record a format, see above)."""
    for name, (module, cls_name, overrides, preset) in CASES.items():
        mod = importlib.import_module(module)
        config = getattr(mod, CONFIGS[module]).from_preset(preset, **{**SIZES, **overrides})
        torch.manual_seed(0)
        model = getattr(mod, cls_name)(config)
        with torch.no_grad():                          # non-trivial values everywhere (init leaves zeros and ones)
            g = torch.Generator().manual_seed(1)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.eval()
        path = Path(directory) / name
        model.save_pretrained(path)
        ids, mask, types = inputs(config.pad_token_id)
        expected = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                    **outputs(model, module, ids, mask, types)}
        save_file({k: v.contiguous() for k, v in expected.items()}, str(path / "expected.safetensors"))
        print(f"wrote {path}")


@pytest.mark.parametrize("name", list(CASES))
def test_old_checkpoint_loads_with_the_same_outputs(name):
    module, cls_name, _, _ = CASES[name]
    path = ROOT / name
    cls = getattr(importlib.import_module(module), cls_name)
    model = cls.from_pretrained(path).eval()
    expected = load_file(str(path / "expected.safetensors"))
    got = outputs(model, module, expected["input_ids"], expected["attention_mask"], expected["token_type_ids"])
    assert got.keys() == expected.keys() - {"input_ids", "attention_mask", "token_type_ids"}
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name} {key}: {m}")


def test_fixtures_cover_every_family_and_the_run_directory_layout():
    families = {json.loads((ROOT / n / "config.json").read_text())["model_type"] for n in CASES}
    assert families == {"bert", "roberta", "albert", "electra"}
    assert (ROOT / "electra-run" / "generator" / "config.json").is_file()
    assert json.loads((ROOT / "bert-crammed-mlm" / "config.json").read_text())["transformers_compatible"] is False


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="DIR", required=True, help="where to write the fixtures")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    write(p.parse_args().write)
