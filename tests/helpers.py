"""What the model test files share: a padded batch, weight perturbation, the comparisons."""
import torch


def padded_batch(vocab_size, T, pad_id=0, lowest_id=5, B=3, seed=0, segments=True, rng=None):
    """Right-padded rows of lengths T, T - 7, 5 (ids >= lowest_id), ~30% of real tokens as MLM labels
    (the originals; -100 elsewhere) and, with `segments`, token types 0 then 1 from mid-row.
    Draws from `rng` (a torch.Generator) when given (the caller may go on drawing from it), else from `seed`."""
    g = rng if rng is not None else torch.Generator().manual_seed(seed)
    input_ids = torch.randint(lowest_id, vocab_size, (B, T), generator=g)
    lengths = torch.tensor([T, T - 7, 5])[:B]
    attention_mask = torch.arange(T)[None] < lengths[:, None]                    # (B, T) bool
    input_ids[~attention_mask] = pad_id
    labels = torch.full((B, T), -100)
    pick = (torch.rand(B, T, generator=g) < 0.3) & attention_mask
    labels[pick] = input_ids[pick]
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    if segments:
        batch["token_type_ids"] = (torch.arange(T)[None] >= (lengths // 2)[:, None]).long() * attention_mask
    return batch


def perturb(model, seed=1, std=0.02):
    """Non-trivial values everywhere (init leaves biases at 0 and LayerNorms at 1), so a swapped name shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def assert_sparse_head_matches_dense(model, b):
    """With labels, an MLM head projects only the predicted positions: same logits and loss as the dense head."""
    dense = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).logits      # (B, T, V)
    sparse = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), labels=b["labels"])
    predicted = b["labels"] != -100
    torch.testing.assert_close(sparse.logits, dense[predicted], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.loss, torch.nn.functional.cross_entropy(dense[predicted], b["labels"][predicted]))


def overfit(model, b, steps, lr):
    """AdamW on one batch for `steps` steps; the first and the last outputs."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        out = model(**b)
        first = first if first is not None else out
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return first, out
