"""Every Triton kernel of `bert_kernels`, compiled ahead of time for sm_80 (A100) and sm_90 (H100/H200) on a CPU.

    python -m bert_kernels.aot                              # the full matrix -> runs/aot/aot_report.{json,md}
    python -m bert_kernels.aot --subset ci --check          # the covering subset CI compiles; exit 1 on a failure
    python -m bert_kernels.aot --write-offered              # + bert_kernels/offered_configs.json and docs/aot_report.md

The interpreter (TRITON_INTERPRET=1) checks the kernels' numerics and nothing a GPU compiler does.
This compiles them as a GPU run would, with no GPU and no driver: `triton.compile` on an ASTSource
of the JITFunction under the @autotune/@heuristics wrappers, for GPUTarget("cuda", 80 | 90, 32),
with the ptxas bundled in the triton wheel; `cuobjdump --dump-resource-usage` of the cubin gives
the registers per thread (REG), the stack frame (STACK: registers spilled to local memory; 0 = no
spill) and the static shared memory, added to the dynamic shared memory Triton allocates
(metadata.shared) and held against the target's per-block limit. Tensor cores: `wgmma` in the PTX
(Hopper's warp-group MMA), else `mma.sync` (Ampere's, also run by Hopper), else none.

The matrix (--subset full): the three flash-attention kernels x every candidate config of
bert_kernels/attention.py's GPU_CONFIGS (what the autotuner may try) x precisions fp16, bf16 and fp32
(ieee matmuls, torch's default; tiles of at most FP32_MAX_TILE elements only, bigger ones spill
kilobytes there) -- tf32 (fp32 operands, allow_tf32) on request -- x head dims 16/32/64/128 x
dropout off/on x the layouts the launchers pass (LAYOUTS: a padding mask with T a multiple of every
block (EVEN_M, EVEN_N) or ragged; no mask, even (no key bias) or ragged; variable length) x both
targets; and the masked-softmax forward and backward x every launch config softmax._launch_config
picks (Tk from 1 to 16384) x fp16/bf16/fp32 x mask x dropout x targets. Each case is specialized
as Triton's JIT specializes a real call: pointers and multiples of 16 marked 16-divisible, 1 a
constant, the dropout seed never specialized.

From the results, per kernel, target and case (precision, head dim, dropout): a config is CLEAN
when it compiles, fits and has STACK 0 in every layout (its layouts are compiled one after another,
stopping at the first that is not clean); offered_configs.json lists the clean ones, and the
autotuner is offered those only (attention._offered_only). A case with no clean config keeps its
least-spilling one (a "fallback", compiled in every layout and listed in the report); a softmax
launch config that spills is listed with its bytes (there is no autotuner to choose another). The
CI subset (--subset ci) compiles every candidate config of every kernel for both targets at least
once, in a case where it is offered, and meanwhile every precision (tf32 too), head dim, layout
(so every switch value) and dropout value at least once; then every config offered for the BERT
cases (D 64, fp16 / bf16, dropout on and off), with a mask and in one other layout. --check fails
on a compile error, or a shared-memory overflow or a spill in an offered config beyond what the
tables record.
Run in a process pool (--jobs, default one per core); set TRITON_CACHE_DIR to compile from nothing.
"""
import argparse
import concurrent.futures as cf
import datetime
import importlib
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import triton

ROOT = Path(__file__).resolve().parents[1]
OFFERED_PATH = Path(__file__).with_name("offered_configs.json")
REPORT_MD = ROOT / "docs" / "aot_report.md"
REPORT_JSON = ROOT / "docs" / "aot_report.json"

TARGETS = {"sm_80": 80, "sm_90": 90}
SHARED_LIMIT = {"sm_80": 166912, "sm_90": 232448}      # max shared memory per block, opt-in: 163 KiB, 227 KiB
ATTENTION_KERNELS = ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv")
SOFTMAX_KERNELS = ("_softmax_fwd", "_softmax_bwd")
KERNELS = ATTENTION_KERNELS + SOFTMAX_KERNELS
# precision -> (operand dtype, DOT_PRECISION the launcher passes)
PRECISIONS = {"fp16": ("fp16", "tf32"), "bf16": ("bf16", "tf32"), "fp32": ("fp32", "ieee"), "tf32": ("fp32", "tf32")}
HEAD_DIMS = (16, 32, 64, 128)
# layout -> (HAS_MASK, VARLEN, T): T = 512 is a multiple of every block (EVEN_M, EVEN_N), 500 of none.
# EVEN_M, EVEN_N and KEY_BIAS then come from attention._HEURISTICS, as at a launch. In this order a
# (case, config) is compiled layout after layout until one does not compile, fit or keep its registers.
LAYOUTS = {"mask": (True, False, 512), "dense": (False, False, 512), "mask-ragged": (True, False, 500),
           "dense-ragged": (False, False, 500), "varlen": (False, True, 500)}
# fp32 (ieee) matmuls run on the FMA units with every operand in registers: tiles above 64 x 64 spill
# kilobytes (D 64, sm_80: 128x64 with 4 warps 6.8 KB, 128x128 9.5 KB) and take 20-40 s each to compile,
# so the matrix compiles fp32 for tiles of at most this many elements (the others are not offered for it)
FP32_MAX_TILE = 64 * 64
SOFTMAX_LAYOUTS = {"dense": False, "mask": True}
# the autotuner's lists before it was pruned per case (commit a994aed): the "before" of the spill table
UNPRUNED_CONFIGS = {
    "_attn_fwd": ("128x64w4s3", "128x64w8s3", "128x128w8s3", "128x64w4s4", "64x64w4s3", "64x64w4s2", "128x32w4s3"),
    "_attn_bwd_dkdv": ("64x128w8s2", "64x128w8s3", "32x128w4s3", "64x64w4s2", "64x64w4s3", "32x64w4s3"),
    "_attn_bwd_dq": ("128x64w8s2", "128x64w8s3", "128x32w4s3", "64x64w4s2", "64x64w4s3", "64x32w4s3"),
}
BERT_PRECISIONS = ("fp16", "bf16")                      # with D 64: the cases BERT-family models run
H = 12                                                  # heads (BERT-base): not a multiple of 16


def _module(kernel):
    return importlib.import_module("bert_kernels.attention" if kernel in ATTENTION_KERNELS else "bert_kernels.softmax")


# ----------------------------------------------------------------------------- the candidates

def candidate_configs(kernel):
    """{name: (meta-parameters, num_warps, num_stages)}: what the autotuner may try (attention), or every
    launch config the launcher can pick (softmax: one per power-of-2 block, Tk from 1 to MAX_TK)."""
    mod = _module(kernel)
    if kernel in ATTENTION_KERNELS:
        return {mod.config_name(m, n, w, s): ({"BLOCK_M": m, "BLOCK_N": n}, w, s)
                for m, n, w, s in mod.GPU_CONFIGS[kernel]}
    out = {}
    for i in range(mod.MAX_TK.bit_length()):
        rows, block, warps = mod._launch_config(2 ** i)
        out[f"{rows}x{block}w{warps}"] = ({"ROWS": rows, "BLOCK": block}, warps, 3)
    return out


def case_name(case):
    """The autotuner's case of a compile: offered_configs.json's key, e.g. "bf16/d64/dropout"."""
    return importlib.import_module("bert_kernels.attention").case_name(case["precision"], case["head_dim"],
                                                                  case["dropout"])


def full_matrix(targets=tuple(TARGETS), kernels=KERNELS, precisions=tuple(PRECISIONS), head_dims=HEAD_DIMS,
                layouts=tuple(LAYOUTS), dropouts=(False, True)):
    """Every (kernel, target, precision, head dim, layout, dropout, config) of the report, as dicts, the
    layouts of one (kernel, target, precision, head dim, dropout, config) one after another."""
    cases = []
    for kernel in kernels:
        configs = candidate_configs(kernel)
        if kernel in ATTENTION_KERNELS:
            grid = [(t, p, d, l, z, c) for t, p, d, z, c in itertools.product(targets, precisions, head_dims,
                                                                             dropouts, configs)
                    if p != "fp32" or configs[c][0]["BLOCK_M"] * configs[c][0]["BLOCK_N"] <= FP32_MAX_TILE
                    for l in layouts]
        else:                                                # no dot: tf32 is fp32 here; no head dim
            grid = itertools.product(targets, [p for p in precisions if p != "tf32"], (None,), SOFTMAX_LAYOUTS,
                                     (False, True), configs)
        cases += [dict(kernel=kernel, target=t, precision=p, head_dim=d, layout=l, dropout=z, config=c)
                  for t, p, d, l, z, c in grid]
    return cases


def _covers(case):
    return {("precision", case["precision"]), ("head_dim", case["head_dim"]), ("layout", case["layout"]),
            ("dropout", case["dropout"])}


def _cost(case):
    """Compile time, roughly: dropout (Philox) doubles it, fp32's FMA matmuls take ~5x, and it grows with D."""
    return (1 + case["dropout"]) * (5 if case["precision"] == "fp32" else 1) * (case["head_dim"] or 64)


def ci_subset(offered, targets=tuple(TARGETS), kernels=KERNELS):
    """A covering subset: per kernel and target, every candidate config once, in a case where it is offered
    (outside a fallback case where possible), each pick the case that covers the most precisions, head dims,
    layouts and dropout values not yet covered, the cheapest of those; then more picks until all of them
    are covered; then every config offered for the cases BERT-family models run (D 64, fp16 and bf16,
    dropout on and off), in the mask layout (where most spills show) and one other, taken in turn.
    Deterministic."""
    picked = []
    for kernel, target in itertools.product(kernels, targets):
        cases = full_matrix((target,), (kernel,))
        table = offered.get("offered", {}).get(kernel, {}).get(target, {})
        fallbacks = offered.get("fallback", {}).get(kernel, {}).get(target, {})

        def is_offered(c):
            return kernel in SOFTMAX_KERNELS or (c["config"] in table.get(case_name(c), ())
                                                  and case_name(c) not in fallbacks)
        want = set().union(*(_covers(c) for c in cases))
        done = set()

        def take(pool):
            pick = min(pool, key=lambda c: (-len(_covers(c) - done), _cost(c)))   # min keeps the first of equals
            picked.append(pick)
            done.update(_covers(pick))
        for config in candidate_configs(kernel):
            pool = [c for c in cases if c["config"] == config]
            take([c for c in pool if is_offered(c)] or pool)
        while want - done:
            new = [c for c in cases if _covers(c) - done]
            take([c for c in new if is_offered(c)] or new)
        if kernel in ATTENTION_KERNELS:                          # and every offered config of the BERT cases
            others = [layout for layout in LAYOUTS if layout != "mask"]
            for i, (precision, dropout) in enumerate(itertools.product(BERT_PRECISIONS, (False, True))):
                case = dict(kernel=kernel, target=target, precision=precision, head_dim=64, dropout=dropout)
                for j, config in enumerate(table.get(case_name(case), ())):
                    for layout in ("mask", others[(i + j) % len(others)]):
                        pick = dict(case, layout=layout, config=config)
                        if pick not in picked:
                            picked.append(pick)
    return picked


# ----------------------------------------------------------------------------- compiling one case

def _jit_function(kernel):
    fn = getattr(_module(kernel), kernel)
    while not isinstance(fn, triton.runtime.jit.JITFunction):    # under @autotune / @heuristics
        if not hasattr(fn, "fn"):
            raise RuntimeError(f"{kernel} is a {type(fn).__name__}, not a JITFunction: bert_kernels was imported with "
                               "TRITON_INTERPRET=1; compile from a process without it (compile_cases does)")
        fn = fn.fn
    return fn


def _arguments(case):
    """(values, constexprs) of a representative launch: pointers as their dtype string ("*bf16"), ints and
    floats as values, constexprs by name; as attention._forward / _backward and softmax's launchers pass them."""
    kernel = case["kernel"]
    meta, _, _ = candidate_configs(kernel)[case["config"]]
    dt, dot_precision = PRECISIONS[case["precision"]]
    if kernel in SOFTMAX_KERNELS:
        T_K = meta["BLOCK"]
        has_mask = SOFTMAX_LAYOUTS[case["layout"]]
        values = dict(X=f"*{dt}", Y=f"*{dt}", DY=f"*{dt}", SAVED=f"*{dt}", DX=f"*{dt}", KEEP="*u8",
                      R=4096 * H, ROWS_PER_BATCH=512 * H, T_K=T_K, stride_x=T_K, stride_y=T_K, stride_dy=T_K,
                      stride_saved=T_K, stride_dx=T_K, scale=0.125, scale_log2e=0.18, seed=1234, dropout_p=0.1)
        return values, dict(HAS_MASK=has_mask, DROPOUT=case["dropout"], **meta)
    has_mask, varlen, T = LAYOUTS[case["layout"]]
    D = case["head_dim"]
    values = {name: f"*{dt}" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    values.update(LSE="*fp32", DELTA="*fp32", KEEP="*u8" if has_mask else "*i32", KEY_END="*i32",
                  CU_SEQLENS="*i32", H=H, T_Q=T, T_K=T, T_BUCKET=triton.next_power_of_2(T),
                  qk_scale=0.18, scale=0.125, seed=1234, dropout_p=0.1)
    for x in ("q", "k", "v", "o", "do", "dq", "dk", "dv"):       # (B, T, 3, H, D) projections, viewed (B, H, T, D)
        values.update({f"stride_{x}b": 0 if varlen else T * 3 * H * D, f"stride_{x}h": D, f"stride_{x}t": 3 * H * D})
    constexprs = dict(HEAD_DIM=D, HAS_MASK=has_mask, VARLEN=varlen, DROPOUT=case["dropout"],
                      DOT_PRECISION=dot_precision, **meta)
    heuristics = _module(kernel)._HEURISTICS
    constexprs.update({k: rule({**values, **constexprs}) for k, rule in heuristics.items()})
    return values, constexprs


def _specialize(value, specialize=True):
    """(signature type, 16-divisible) as Triton's JIT specializes an argument: 1 becomes a constant."""
    if isinstance(value, str):
        return value, True                                   # a pointer: torch allocations are 16-aligned
    if isinstance(value, float):
        return "fp32", False
    if specialize and value == 1:
        return "constexpr", False
    return ("i32" if -2**31 <= value < 2**31 else "i64"), specialize and value % 16 == 0


def _source(case):
    from triton.compiler import ASTSource
    fn = _jit_function(case["kernel"])
    values, constexprs = _arguments(case)
    signature, consts, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name], consts[(i,)] = "constexpr", constexprs[name]
            continue
        kind, divisible = _specialize(values[name], specialize=name != "seed")   # do_not_specialize=["seed"]
        signature[name] = kind
        if kind == "constexpr":
            consts[(i,)] = values[name]
        elif divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature, consts, attrs)


def _cuobjdump():
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin):
    """{"regs", "stack", "static_shared"} of the one kernel in a cubin, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out[:200]!r}")
    return dict(regs=int(m[1]), stack=int(m[2]), static_shared=int(m[3]))


def tensor_cores(ptx):
    return "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "none"


def compile_case(case):
    """The case dict plus: ok, error, regs, stack, shared (dynamic + static bytes), fits, tc, compile_s."""
    import warnings
    from triton.backends.compiler import GPUTarget
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    _, num_warps, num_stages = candidate_configs(case["kernel"])[case["config"]]
    t0 = time.perf_counter()
    try:
        k = triton.compile(_source(case), target=GPUTarget("cuda", TARGETS[case["target"]], 32),
                           options=dict(num_warps=num_warps, num_stages=num_stages))
        usage = resource_usage(k.asm["cubin"])
    except Exception as e:  # a compile error is a result, reported with its first line
        msg = str(e).strip().splitlines()
        return {**case, "ok": False, "error": f"{type(e).__name__}: {msg[0][:300] if msg else ''}",
                "compile_s": round(time.perf_counter() - t0, 2)}
    shared = k.metadata.shared + usage["static_shared"]
    return {**case, "ok": True, "regs": usage["regs"], "stack": usage["stack"], "shared": shared,
            "fits": shared <= SHARED_LIMIT[case["target"]], "tc": tensor_cores(k.asm["ptx"]),
            "compile_s": round(time.perf_counter() - t0, 2)}


def clean(result):
    return result["ok"] and result["fits"] and result["stack"] == 0


# ----------------------------------------------------------------------------- many cases

_FIELDS = ("kernel", "target", "precision", "head_dim", "layout", "dropout", "config")


def _key(case, without=()):
    return tuple(case[k] for k in _FIELDS if k not in without)


def compile_group(cases, stop_early=True):
    """compile_case over the layouts of one (case, config) in turn, stopping at the first that is not clean
    (the config is then not offered for the case, whatever the other layouts say) unless not stop_early."""
    results = []
    for case in cases:
        results.append(compile_case(case))
        if stop_early and not clean(results[-1]):
            break
    return results


def compile_cases(cases, jobs=None, progress=None, done=(), stop_early=True):
    """compile_group over `cases` grouped by all but the layout, in a pool of `jobs` processes (default: one
    per core); the results in the order of the input, without the layouts a group stopped before. `done`:
    results already had (an interrupted run's), not compiled again. `progress(result)` is called as each one
    comes. Under TRITON_INTERPRET=1 this process cannot compile: the pool's processes start without it."""
    have = {_key(r): r for r in done}
    groups = {}
    for c in cases:
        groups.setdefault(_key(c, without=("layout",)), []).append(c)
    todo = []
    for group in groups.values():
        had = [have[_key(c)] for c in group if _key(c) in have]
        if not stop_early or all(clean(r) for r in had):
            todo.append([c for c in group if _key(c) not in have])
    # the cheap softmax first, then the cases BERT-family models run (D 64, 16-bit), fp32's slow ones last
    todo.sort(key=lambda g: (g[0]["kernel"] in ATTENTION_KERNELS, g[0]["precision"] == "fp32",
                             g[0]["head_dim"] != 64) if g else ())
    jobs = jobs or os.cpu_count() or 1
    env_interpret = os.environ.pop("TRITON_INTERPRET", None)     # spawned workers inherit the environment
    try:
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(compile_group, group, stop_early) for group in todo if group]
            for f in cf.as_completed(futures):
                for r in f.result():
                    have[_key(r)] = r
                    if progress:
                        progress(r)
    finally:
        if env_interpret is not None:
            os.environ["TRITON_INTERPRET"] = env_interpret
    return [have[_key(c)] for c in cases if _key(c) in have]


# ----------------------------------------------------------------------------- what the results say

def per_case(results):
    """{(kernel, target, case): {config: {"ok", "fits", "stack" (max over layouts), "regs", "shared", "tc", ...}}}
    over the attention kernels: a config's worst over the layouts of a case."""
    table = {}
    for r in results:
        if r["kernel"] not in ATTENTION_KERNELS:
            continue
        cell = table.setdefault((r["kernel"], r["target"], case_name(r)), {}).setdefault(
            r["config"], dict(ok=True, fits=True, stack=0, regs=0, shared=0, tc=set(), worst_layout=None, n=0))
        cell["n"] += 1
        if not r["ok"]:
            cell["ok"] = False
            cell["error"] = r["error"]
            continue
        cell["fits"] &= r["fits"]
        if r["stack"] > cell["stack"]:
            cell["stack"], cell["worst_layout"] = r["stack"], r["layout"]
        cell["regs"] = max(cell["regs"], r["regs"])
        cell["shared"] = max(cell["shared"], r["shared"])
        cell["tc"].add(r["tc"])
    return table


def offered_tables(results):
    """offered_configs.json's content: per kernel, target and case the clean configs, in GPU_CONFIGS' order;
    where none is clean, the least-spilling one that compiles and fits (a fallback, also listed apart)."""
    offered, fallback = {}, {}
    for (kernel, target, case), cells in sorted(per_case(results).items()):
        order = list(candidate_configs(kernel))
        good = [c for c in order if c in cells and cells[c]["ok"] and cells[c]["fits"]]
        keep = [c for c in good if cells[c]["stack"] == 0]
        if not keep and good:
            least = min(good, key=lambda c: cells[c]["stack"])        # min keeps the first of equals
            keep = [least]
            fallback.setdefault(kernel, {}).setdefault(target, {})[case] = dict(config=least,
                                                                                stack=cells[least]["stack"])
        offered.setdefault(kernel, {}).setdefault(target, {})[case] = keep
    softmax = {}                                              # no autotuner: a spilling launch config is kept
    for r in results:
        if r["kernel"] in SOFTMAX_KERNELS and r["ok"] and r["stack"]:
            known = softmax.setdefault(r["kernel"], {}).setdefault(r["target"], {})
            known[r["config"]] = max(known.get(r["config"], 0), r["stack"])
    return dict(about="Generated by `python -m bert_kernels.aot --write-offered`: per kernel, target and case the "
                      "configs the autotuner is offered (they compile, fit shared memory and do not spill in any "
                      "layout); a fallback case has no such config and keeps its least-spilling one; "
                      "softmax_spills: the masked-softmax launch configs that spill (worst stack bytes).",
                triton=triton.__version__, date=datetime.date.today().isoformat(),
                offered=offered, fallback=fallback, softmax_spills=softmax)


def failures(results, offered):
    """[(result, why)] for the --check: a compile error; a shared-memory overflow or a spill in a config that
    `offered` offers for its case (or a softmax launch config), a spill recorded there (a fallback case's, a
    softmax_spills entry) up to its recorded bytes excepted."""
    bad = []
    for r in results:
        table = offered.get("offered", {}).get(r["kernel"], {}).get(r["target"], {})
        is_softmax = r["kernel"] in SOFTMAX_KERNELS
        name = None if is_softmax else case_name(r)
        is_offered = is_softmax or r["config"] in table.get(name, ())
        if is_softmax:
            stack = offered.get("softmax_spills", {}).get(r["kernel"], {}).get(r["target"], {}).get(r["config"])
            known = None if stack is None else dict(config=r["config"], stack=stack)
        else:
            known = offered.get("fallback", {}).get(r["kernel"], {}).get(r["target"], {}).get(name)
        if not r["ok"]:
            bad.append((r, r["error"]))
        elif is_offered and not r["fits"]:
            bad.append((r, f"shared memory {r['shared']} B > {SHARED_LIMIT[r['target']]} B"))
        elif is_offered and r["stack"] and not (known and known["config"] == r["config"]
                                                 and r["stack"] <= known["stack"]):
            bad.append((r, f"spills: {r['stack']} B of stack"))
    return bad


def _label(r):
    d = "" if r["head_dim"] is None else f" D={r['head_dim']}"
    return (f"{r['kernel']} {r['target']} {r['precision']}{d} {r['layout']} dropout={int(r['dropout'])} "
            f"{r['config']}")


def spill_summary(results, offered, kernels=ATTENTION_KERNELS):
    """Rows (kernel, target, scope, before, after) for the before/after table, each [spilling (case, config)
    pairs, pairs, worst stack bytes] over the pairs that compile. before: UNPRUNED_CONFIGS, what the autotuner
    was offered in every case; after: the configs `offered` offers. scope "all" or "BERT" (D 64, fp16 and
    bf16, every layout and dropout). A pair's bytes: those of the first layout where it spills."""
    rows = []
    cells = per_case(results)
    for kernel, target in itertools.product(kernels, TARGETS):
        for scope in ("all", "BERT"):
            before, after = [0, 0, 0], [0, 0, 0]              # spilling pairs, pairs, worst stack bytes
            for (k, t, case), configs in cells.items():
                if (k, t) != (kernel, target) or (scope == "BERT" and not re.match(r"(fp16|bf16)/d64/", case)):
                    continue
                names = offered.get("offered", {}).get(k, {}).get(t, {}).get(case, ())
                for c, cell in configs.items():
                    spill = cell["ok"] and cell["stack"] > 0
                    for tally, counted in ((before, c in UNPRUNED_CONFIGS[k]), (after, c in names)):
                        if counted and cell["ok"]:
                            tally[0] += spill
                            tally[1] += 1
                            tally[2] = max(tally[2], cell["stack"])
            if before[1]:
                rows.append((kernel, target, scope, before, after))
    return rows


def markdown(results, offered, seconds, title):
    """The report: how it was made, the totals, the before/after spill table, then one table with a row per
    (kernel, target, case): configs offered, spilling (bytes, worst layout), over the shared-memory limit or
    failing to compile, max registers, tensor-core instructions; then the softmax kernels."""
    n_ok = sum(r["ok"] for r in results)
    lines = [f"# {title}", "",
             f"{datetime.date.today().isoformat()}, Triton {triton.__version__}, targets "
             f"{', '.join(f'{t} (shared memory limit {SHARED_LIMIT[t]} B)' for t in TARGETS)}; generated by "
             f"`python -m bert_kernels.aot` (method: bert_kernels/aot.py's docstring). {len(results)} compiles, {n_ok} "
             f"compiled, {sum(not r['ok'] for r in results)} errors, "
             f"{sum(r['ok'] and not r['fits'] for r in results)} over the shared-memory limit, "
             f"{sum(r['ok'] and r['stack'] > 0 for r in results)} spilling; "
             f"{sum(r['compile_s'] for r in results) / 60:.1f} min of compiling (the sum over the compiles), "
             f"{seconds / 60:.1f} min wall in the invocation that wrote this (an interrupted run's results are "
             "resumed from its progress file).", "",
             "## Spills before and after pruning", "",
             "(case, config) pairs that spill in at least one layout, of the pairs that compile; before: the "
             "configs the autotuner was offered in every case before pruning (bert_kernels.aot.UNPRUNED_CONFIGS); "
             "after: those offered_configs.json offers. A case is (precision, head dim, dropout); BERT: D 64, "
             "fp16 and bf16. The bytes: the worst pair's stack in the first layout where it spills (layouts are "
             f"compiled in the order {', '.join(LAYOUTS)}, stopping at the first that spills).", "",
             "| kernel | target | cases | before: spilling / pairs (worst) | after: spilling / pairs (worst) |",
             "|---|---|---|---|---|"]
    for kernel, target, scope, b, a in spill_summary(results, offered):
        lines.append(f"| {kernel} | {target} | {scope} | {b[0]} / {b[1]} ({b[2]} B) | {a[0]} / {a[1]} ({a[2]} B) |")
    fb = [(k, t, c, v) for k, ts in offered.get("fallback", {}).items() for t, cs in ts.items() for c, v in cs.items()]
    lines += ["", f"Cases with no clean config (fallback: the least-spilling one is offered): {len(fb) or 'none'}."]
    lines += [f"- {k} {t} {c}: {v['config']}, {v['stack']} B of stack" for k, t, c, v in fb]
    sp = [(k, t, c, b) for k, ts in offered.get("softmax_spills", {}).items() for t, cs in ts.items()
          for c, b in cs.items()]
    lines += ["", f"Masked-softmax launch configs that spill (no autotuner: kept, checked against these bytes): "
              f"{len(sp) or 'none'}."]
    lines += [f"- {k} {t} {c}: up to {b} B of stack" for k, t, c, b in sp]
    lines += ["", "## Per case", "",
              "Per (kernel, target, precision/head dim/dropout), over the layouts "
              f"({', '.join(LAYOUTS)}) and candidate configs: offered configs; spilling ones with their worst "
              "stack bytes and layout; over the shared-memory limit; compile errors; max registers per thread; "
              "tensor-core instructions.", "",
              "| kernel | target | case | offered | spilling (B, worst layout) | over shared | errors | max REG | "
              "tensor cores |", "|---|---|---|---|---|---|---|---|---|"]
    for (kernel, target, case), cells in sorted(per_case(results).items()):
        names = offered.get("offered", {}).get(kernel, {}).get(target, {}).get(case, [])
        spill = ", ".join(f"{c} ({v['stack']}, {v['worst_layout']})" for c, v in cells.items() if v["ok"] and v["stack"])
        over = ", ".join(f"{c} ({v['shared'] // 1024} KiB)" for c, v in cells.items() if v["ok"] and not v["fits"])
        errors = ", ".join(c for c, v in cells.items() if not v["ok"])
        regs = max((v["regs"] for v in cells.values() if v["ok"]), default=0)
        tc = "/".join(sorted(set().union(*(v["tc"] for v in cells.values() if v["ok"])))) or "-"
        lines.append(f"| {kernel} | {target} | {case} | {', '.join(names) or '-'} | {spill or '-'} | {over or '-'} | "
                     f"{errors or '-'} | {regs} | {tc} |")
    soft = [r for r in results if r["kernel"] in SOFTMAX_KERNELS]
    if soft:
        lines += ["", "## Masked softmax (launch configs ROWSxBLOCKwWARPS, one per power-of-2 Tk)", "",
                  "| kernel | target | compiles | spilling | over shared | errors | max REG |", "|---|---|---|---|---|---|---|"]
        for kernel, target in itertools.product(SOFTMAX_KERNELS, TARGETS):
            rs = [r for r in soft if (r["kernel"], r["target"]) == (kernel, target)]
            if not rs:
                continue
            sp = sorted({f"{r['config']} ({r['stack']} B)" for r in rs if r["ok"] and r["stack"]})
            lines.append(f"| {kernel} | {target} | {len(rs)} | {', '.join(sp) or '-'} | "
                         f"{sum(r['ok'] and not r['fits'] for r in rs) or '-'} | {sum(not r['ok'] for r in rs) or '-'} | "
                         f"{max((r['regs'] for r in rs if r['ok']), default=0)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line

def _load_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", choices=("full", "ci"), default="full", help="the whole matrix, or the CI subset")
    p.add_argument("--targets", nargs="+", choices=tuple(TARGETS), default=list(TARGETS))
    p.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    p.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=["fp16", "bf16", "fp32"],
                   help="(the full matrix; the CI subset takes all four) default: fp16 bf16 fp32")
    p.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--dropout", nargs="+", type=int, choices=(0, 1), default=[0, 1])
    p.add_argument("--head-dims", nargs="+", type=int, choices=HEAD_DIMS, default=list(HEAD_DIMS))
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiling processes (default: one per core)")
    p.add_argument("--out", default=str(ROOT / "runs" / "aot"), help="folder for aot_report.json / .md (and the "
                   "progress file aot_results.jsonl, from which an interrupted run resumes)")
    p.add_argument("--resume", action="store_true", help="keep the results already in --out's progress file")
    p.add_argument("--no-compile", action="store_true", help="with --resume: report what the progress file has, "
                   "compile nothing")
    p.add_argument("--offered", default=str(OFFERED_PATH), help="the offered-config tables the CI subset and "
                   "--check read (default: bert_kernels/offered_configs.json)")
    p.add_argument("--write-offered", action="store_true", help="(full matrix) write the offered-config tables "
                   "to --offered, and the report to docs/aot_report.{md,json}")
    p.add_argument("--check", action="store_true", help="exit 1 on a compile error, or on a shared-memory "
                   "overflow or spill in an offered config")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.no_compile and not args.resume:
        p.error("--no-compile reports the results of an earlier run: give --resume too")
    if args.write_offered and args.subset != "full":
        p.error("--write-offered needs the full matrix (--subset full): the tables say which configs are clean "
                "in every case")
    return args


def _compact(results):
    """The committed JSON: a row per (kernel, target, case, config), a config's worst over the layouts (its
    stack bytes those of the first layout where it spills), and per softmax launch config its worst."""
    columns = ["kernel", "target", "case", "config", "ok", "fits", "stack", "worst_layout", "regs", "shared", "tc",
               "layouts"]
    rows = [[k, t, c, name, v["ok"], v["fits"], v["stack"], v["worst_layout"], v["regs"], v["shared"],
             "/".join(sorted(v["tc"])), v["n"]]
            for (k, t, c), cells in sorted(per_case(results).items()) for name, v in cells.items()]
    soft = {}
    for r in results:
        if r["kernel"] in SOFTMAX_KERNELS:
            cell = soft.setdefault((r["kernel"], r["target"], r["config"]), [0, 0, 0, 0, True])
            cell[0] += 1
            cell[4] &= r["ok"]
            if r["ok"]:
                cell[1:4] = [max(cell[1], r["regs"]), max(cell[2], r["stack"]), max(cell[3], r["shared"])]
    return dict(triton=triton.__version__, date=datetime.date.today().isoformat(), shared_limit=SHARED_LIMIT,
                columns=columns, attention=rows,
                softmax_columns=["kernel", "target", "config", "compiles", "regs", "stack", "shared", "ok"],
                softmax=[[k, t, c, *cell] for (k, t, c), cell in sorted(soft.items())])


def _compile_logged(cases, jobs, done, progress_path, stop_early=True):
    """compile_cases, each result appended to the progress file as it comes, the unclean ones printed."""
    count = [0]
    with open(progress_path, "a") as log:
        def progress(r):
            count[0] += 1
            log.write(json.dumps(r) + "\n")
            log.flush()
            if not clean(r) or count[0] % 50 == 0:
                state = (r.get("error") or ("over shared memory" if not r["fits"] else f"stack {r['stack']} B")
                         if not clean(r) else "ok")
                print(f"  [{count[0]}] {_label(r)}: {state}", flush=True)
        return compile_cases(cases, jobs, progress, done, stop_early)


def _complete_fallbacks(cases, results, jobs, progress_path):
    """The fallback configs compiled in the layouts their group stopped before, so that a fallback's bytes are
    its worst over every layout (then maybe another config is the least-spilling: again, until none changes).
    Returns the results, completed, in the order of `cases`."""
    completed = set()
    while True:
        fallback = offered_tables(results)["fallback"]
        wanted = {(k, t, case, v["config"]) for k, ts in fallback.items() for t, cs in ts.items()
                  for case, v in cs.items()} - completed
        if not wanted:
            return results
        rest = [c for c in cases if c["kernel"] in ATTENTION_KERNELS
                and (c["kernel"], c["target"], case_name(c), c["config"]) in wanted]
        more = _compile_logged(rest, jobs, results, progress_path, stop_early=False)
        have = {_key(r): r for r in results + more}
        results = [have[_key(c)] for c in cases if _key(c) in have]
        completed |= wanted


def main(argv=None):
    args = parse_args(argv)
    offered = _load_json(args.offered)
    if args.subset == "ci":
        cases = ci_subset(offered, tuple(args.targets), tuple(args.kernels))
    else:
        cases = full_matrix(tuple(args.targets), tuple(args.kernels), tuple(args.precisions), tuple(args.head_dims),
                            tuple(args.layouts), tuple(bool(z) for z in args.dropout))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / "aot_results.jsonl"
    done = []
    if args.resume and progress_path.exists():
        done = [json.loads(line) for line in progress_path.read_text().splitlines() if line.strip()]
    elif progress_path.exists():
        progress_path.unlink()
    print(f"bert_kernels.aot: {len(cases)} compiles ({args.subset}), {args.jobs} processes, Triton {triton.__version__}; "
          f"{len(done)} already in {progress_path}", flush=True)
    t0 = time.perf_counter()
    if args.no_compile:
        have = {_key(r): r for r in done}
        results = [have[_key(c)] for c in cases if _key(c) in have]
    else:
        results = _compile_logged(cases, args.jobs, done, progress_path)
        if args.subset == "full":
            results = _complete_fallbacks(cases, results, args.jobs, progress_path)
    seconds = time.perf_counter() - t0
    title = "Ahead-of-time compile report" + (" (CI subset)" if args.subset == "ci" else "")
    # the full matrix says what to offer; a subset is held against the committed tables
    tables = offered_tables(results) if args.subset == "full" else offered
    if args.write_offered:
        offered = tables
        Path(args.offered).write_text(json.dumps(offered, indent=1) + "\n")
        REPORT_MD.write_text(markdown(results, offered, seconds, title))
        REPORT_JSON.write_text(json.dumps(_compact(results)) + "\n")
        print(f"wrote {args.offered}, {REPORT_MD}, {REPORT_JSON}")
    (out / "aot_report.json").write_text(json.dumps(dict(subset=args.subset, seconds=seconds, results=results)))
    (out / "aot_report.md").write_text(markdown(results, tables, seconds, title))
    bad = failures(results, offered)
    print(f"{len(results)} compiles in {seconds:.0f} s: {sum(clean(r) for r in results)} clean, {len(bad)} failing "
          f"the check; report {out / 'aot_report.md'}")
    for r, why in bad:
        print(f"  FAIL {_label(r)}: {why}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
