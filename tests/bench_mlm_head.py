"""The sparse MLM head against the dense one: a full BERT training step (forward, backward).

    python -m pytest tests/bench_mlm_head.py --benchmark-only --benchmark-group-by=group

"sparse" is what bert.py does with labels: only the ~15% masked positions are projected to the
vocabulary. "dense" projects every position (B, T, V), as an MLM head without that trick does,
and takes the same loss (cross-entropy with ignore_index=-100). Runs on the CPU and on a GPU.
"""
import pytest
import torch
import torch.nn.functional as F

import bert

B, T, V = 8, 128, 30522
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(preset):
    torch.manual_seed(0)
    model = bert.BertForMaskedLM(bert.BertConfig.from_preset(preset, vocab_size=V)).to(DEVICE)
    ids = torch.randint(5, V, (B, T), device=DEVICE)
    labels = torch.where(torch.rand(B, T, device=DEVICE) < 0.15, ids, -100)
    return model, ids, labels


def sparse_step(model, ids, labels):
    loss = model(ids, labels=labels).loss
    loss.backward()
    return loss


def dense_step(model, ids, labels):
    logits = model(ids).logits                                                  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, V).float(), labels.view(-1), ignore_index=-100)
    loss.backward()
    return loss


@pytest.mark.parametrize("preset", ["mini", "small"])
@pytest.mark.parametrize("head", ["sparse", "dense"])
def test_mlm_head_step(benchmark, preset, head):
    model, ids, labels = make(preset)
    step = sparse_step if head == "sparse" else dense_step
    model.eval()                                                    # same loss, without dropout's noise
    torch.testing.assert_close(sparse_step(model, ids, labels), dense_step(model, ids, labels), atol=1e-4, rtol=1e-5)
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        step(model, ids, labels)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"BERT-{preset} MLM training step, batch {B} x seq {T}, vocab {V}, {DEVICE}"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = B * T / benchmark.stats.stats.mean
