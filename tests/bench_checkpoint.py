"""What fault tolerance costs: writing one pretraining checkpoint, and verifying one on resume.

    python -m pytest tests/bench_checkpoint.py --benchmark-only --benchmark-group-by=param:run

save:     train.save_checkpoint, all of it: the model, the tokenizer, the training state (AdamW's two moments),
          the manifest (every file synced to disk, then its SHA-256), the rename, --keep's pruning and the
          export of the model to OUT.
manifest: write_manifest alone (sync + SHA-256 of every file): the part this project adds to a plain save.
verify:   check_manifest, what --resume does to the newest checkpoint before it loads it.
extra_info holds the checkpoint's size in bytes. BERT with a 30,522-token vocabulary, after one AdamW step.
"""
import argparse
import itertools

import pytest
import torch

import bert
import tokenizer as tokenizers_lib
import train
from cli import make_optimizer


@pytest.fixture(scope="module", params=["tiny", "base"])
def run(request, tmp_path_factory):
    """(preset, run dir, model, tokenizer, optimizer, scheduler, args) after one optimizer step."""
    torch.manual_seed(0)
    model = bert.BertForPreTraining(bert.BertConfig.from_preset(request.param, vocab_size=30522))
    optimizer = make_optimizer(model, 1e-4, 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.randint(5, 30522, (2, 32))
    model(ids, labels=ids, next_sentence_label=torch.zeros(2, dtype=torch.long)).loss.backward()
    optimizer.step()
    text = tmp_path_factory.mktemp("text") / "t.txt"
    text.write_text("a few words to train a tokenizer on, and a few more words\n" * 20)
    tok = tokenizers_lib.train([str(text)], kind="wordpiece", vocab_size=100)
    args = argparse.Namespace(keep=2, model="bert", preset=request.param)
    return request.param, tmp_path_factory.mktemp(f"run-{request.param}"), model, tok, optimizer, scheduler, args


def checkpoint_bytes(ckpt):
    return sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())


def test_save(benchmark, run):
    preset, out, model, tok, optimizer, scheduler, args = run
    steps = itertools.count(1)
    ckpt = benchmark.pedantic(lambda: train.save_checkpoint(out, next(steps), model, tok, optimizer, scheduler,
                                                            None, args), rounds=3, iterations=1)
    benchmark.extra_info["bytes"] = checkpoint_bytes(ckpt)
    assert train.check_manifest(ckpt) is None


def test_manifest(benchmark, run):
    preset, out, model, tok, optimizer, scheduler, args = run
    ckpt = train.save_checkpoint(out, 100, model, tok, optimizer, scheduler, None, args)
    benchmark.pedantic(train.write_manifest, args=(ckpt,), rounds=3, iterations=1)
    benchmark.extra_info["bytes"] = checkpoint_bytes(ckpt)


def test_verify(benchmark, run):
    preset, out, model, tok, optimizer, scheduler, args = run
    ckpt = train.save_checkpoint(out, 200, model, tok, optimizer, scheduler, None, args)
    assert benchmark.pedantic(train.check_manifest, args=(ckpt,), rounds=3, iterations=1) is None
    benchmark.extra_info["bytes"] = checkpoint_bytes(ckpt)
