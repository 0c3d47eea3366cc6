"""Benchmarks for bert_kernels/attention.py and bert_kernels/softmax.py (pytest-benchmark, CUDA only).

    pytest tests/bench_kernels.py --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,max

Skipped without CUDA, and in the normal test run (pytest.ini passes --benchmark-skip).

Attention providers, per group "attention {fwd|fwd+bwd} T={T} {dtype}", BERT-base heads (H = 12,
D = 64), B*T = 16384 tokens, ~30% of the keys padding (right padding, random lengths):
  triton       bert_kernels.attention(impl="triton"): the flash kernel of this repo, with the mask
  triton_nomask  the same kernel without a mask (it attends to the padding too): beside sdpa_nomask
  sdpa_mask    F.scaled_dot_product_attention with the (B, 1, 1, T) bool mask: same semantics,
               PyTorch routes it to the memory-efficient kernel
  sdpa_nomask  SDPA without a mask: the flash backend, a speed ceiling with other semantics
               (it attends to the padding too)
  eager        bert_kernels.reference.attention: materializes the fp32 (B, H, T, T) scores
extra_info: TFLOP/s counted over the full T x T (forward 4*B*H*T^2*D; the backward counts 2.5x
the forward, the FlashAttention convention, so fwd+bwd is 3.5x) and peak_mem_MiB, the peak memory
allocated during one call above what was allocated before it.

Masked softmax, group "masked_softmax T=512 {dtype}": GB/s = (bytes of the scores read + bytes of
the probabilities written) / time, bert_kernels.masked_softmax(impl="triton") against
torch.softmax(scores.float().masked_fill(~mask, -inf) * scale) as eager PyTorch writes it.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import bert_kernels
from bert_kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

TOKENS, H, D = 16384, 12, 64
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(T, dtype, requires_grad):
    B = TOKENS // T
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to("cuda", dtype).requires_grad_(requires_grad)
               for _ in range(3))
    lengths = torch.randint(int(0.4 * T), T + 1, (B,), generator=g)          # ~30% padding on average
    mask = (torch.arange(T)[None, :] < lengths[:, None]).cuda()               # (B, T), True = real
    return q, k, v, mask


def sdpa_mask(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


def sdpa_nomask(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v)


ATTENTION_PROVIDERS = {
    "triton": lambda q, k, v, mask: bert_kernels.attention(q, k, v, mask, impl="triton"),
    "triton_nomask": lambda q, k, v, mask: bert_kernels.attention(q, k, v, None, impl="triton"),
    "sdpa_mask": sdpa_mask,
    "sdpa_nomask": sdpa_nomask,
    "eager": reference.attention,
}


def peak_memory_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def record(benchmark, peak_mib, **per_second):
    """extra_info: peak memory, and each amount (e.g. TFLOP/s=1e-12 * flops) per median second."""
    benchmark.extra_info["peak_mem_MiB"] = round(peak_mib, 1)
    if benchmark.stats is not None:                       # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        for name, amount in per_second.items():
            benchmark.extra_info[name.replace("_per_s", "/s")] = round(amount / seconds, 2)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("T", [128, 512, 2048])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", list(ATTENTION_PROVIDERS))
def test_bench_attention(benchmark, provider, mode, T, dtype_name):
    dtype = DTYPES[dtype_name]
    q, k, v, mask = make_inputs(T, dtype, requires_grad=(mode == "fwd+bwd"))
    fn = ATTENTION_PROVIDERS[provider]
    grad_out = torch.randn_like(q)

    def run():
        if mode == "fwd":
            with torch.no_grad():
                fn(q, k, v, mask)
        else:
            out = fn(q, k, v, mask)
            torch.autograd.grad(out, (q, k, v), grad_out)
        torch.cuda.synchronize()

    run()                                                  # compile and autotune outside the timing
    peak = peak_memory_mib(run)
    benchmark.group = f"attention {mode} T={T} {dtype_name}"
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    B = TOKENS // T
    flops = 4 * B * H * T * T * D * (1.0 if mode == "fwd" else 3.5)
    record(benchmark, peak, TFLOP_per_s=flops / 1e12)


def eager_masked_softmax(scores, mask, scale):
    s = scores.float().masked_fill(~mask[:, None, None, :], float("-inf")) * scale
    return torch.softmax(s, dim=-1).to(scores.dtype)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("provider", ["triton", "torch"])
def test_bench_masked_softmax(benchmark, provider, dtype_name):
    T = 512
    dtype = DTYPES[dtype_name]
    q, k, _, mask = make_inputs(T, dtype, requires_grad=False)
    scores = q @ k.transpose(-2, -1)                                          # (B, H, T, T)
    scale = 1 / math.sqrt(D)
    if provider == "triton":
        fn = lambda: bert_kernels.masked_softmax(scores, mask, scale, impl="triton")
    else:
        fn = lambda: eager_masked_softmax(scores, mask, scale)

    def run():
        with torch.no_grad():
            fn()
        torch.cuda.synchronize()

    run()
    peak = peak_memory_mib(run)
    benchmark.group = f"masked_softmax T={T} {dtype_name}"
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    record(benchmark, peak, GB_per_s=2 * scores.numel() * scores.element_size() / 1e9)
