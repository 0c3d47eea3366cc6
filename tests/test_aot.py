"""bert_kernels/aot.py: the kernels compiled ahead of time for sm_80 / sm_90 on this CPU, and the configs offered.

The CI subset (test_ci_subset_compiles_fits_and_does_not_spill) compiles every kernel, every candidate config,
every precision, head dim, layout and dropout value at least once for both targets, in a fresh process
without TRITON_INTERPRET (this one interprets) and with an empty Triton cache, and fails on a compile
error, or a shared-memory overflow or spill in a config the autotuner is offered. The other tests check the
pieces without compiling: the case matrix and its arguments, the tables, the pruning hook, the check.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton

from bert_kernels import aot

ROOT = Path(__file__).resolve().parents[1]
attention = importlib.import_module("bert_kernels.attention")
softmax = importlib.import_module("bert_kernels.softmax")
OFFERED = json.loads(aot.OFFERED_PATH.read_text())
TOOLS = Path(aot._cuobjdump()).exists() and (Path(aot._cuobjdump()).parent / "ptxas").exists()


def result(config, stack=0, ok=True, fits=True, layout="mask", precision="bf16", head_dim=64, dropout=False,
           kernel="_attn_fwd", target="sm_90"):
    r = dict(kernel=kernel, target=target, precision=precision, head_dim=head_dim, layout=layout, dropout=dropout,
             config=config, ok=ok, compile_s=1.0)
    if ok:
        r.update(regs=200, stack=stack, shared=1000 if fits else 10**6, fits=fits, tc="wgmma")
    else:
        r["error"] = "CompilationError: boom"
    return r


# ----------------------------------------------------------------------------- the matrix and its arguments

def test_candidates_are_what_the_launchers_can_pick():
    for kernel in aot.ATTENTION_KERNELS:
        names = list(aot.candidate_configs(kernel))
        assert names == [attention.config_name(*c) for c in attention.GPU_CONFIGS[kernel]]
        assert len(set(names)) == len(names)
    launch = {softmax._launch_config(t) for t in [1, 2, 3, 17, 100, 512, 513, 4096, 9000, 16384]}
    soft = {(meta["ROWS"], meta["BLOCK"], w) for meta, w, _ in aot.candidate_configs("_softmax_fwd").values()}
    assert launch <= soft and len(soft) == 15                        # one per power-of-2 block, 1 ... 16384


def test_arguments_follow_the_launchers_heuristics():
    case = dict(kernel="_attn_fwd", target="sm_90", precision="bf16", head_dim=64, dropout=True, config="128x64w4s3")
    _, dense = aot._arguments({**case, "layout": "dense"})
    _, ragged = aot._arguments({**case, "layout": "mask-ragged"})
    _, varlen = aot._arguments({**case, "layout": "varlen"})
    assert (dense["EVEN_M"], dense["EVEN_N"], dense["KEY_BIAS"], dense["HAS_MASK"]) == (True, True, False, False)
    assert (ragged["EVEN_M"], ragged["EVEN_N"], ragged["KEY_BIAS"], ragged["HAS_MASK"]) == (False, False, True, True)
    assert varlen["VARLEN"] and not varlen["EVEN_M"] and varlen["KEY_BIAS"]
    values, _ = aot._arguments({**case, "precision": "fp32", "layout": "mask"})
    assert values["Q"] == "*fp32" and values["KEEP"] == "*u8"
    assert aot._arguments({**case, "precision": "fp32", "layout": "mask"})[1]["DOT_PRECISION"] == "ieee"


@pytest.mark.parametrize("kernel", aot.KERNELS)
def test_every_kernel_argument_has_a_value(kernel):
    """The kernel's own parameter list (InterpretedFunction and JITFunction both have arg_names)."""
    fn = getattr(aot._module(kernel), kernel)
    while type(fn).__name__ in ("Autotuner", "Heuristics"):
        fn = fn.fn
    config = next(iter(aot.candidate_configs(kernel)))
    head_dim = 64 if kernel in aot.ATTENTION_KERNELS else None
    values, constexprs = aot._arguments(dict(kernel=kernel, target="sm_80", precision="fp16", head_dim=head_dim,
                                             layout="mask", dropout=False, config=config))
    assert set(fn.arg_names) <= set(values) | set(constexprs)


def test_specialization_is_the_jits():
    assert aot._specialize("*bf16") == ("*bf16", True)
    assert aot._specialize(1) == ("constexpr", False)
    assert aot._specialize(512) == ("i32", True) and aot._specialize(500) == ("i32", False)
    assert aot._specialize(0) == ("i32", True)                      # a varlen batch stride
    assert aot._specialize(1234, specialize=False) == ("i32", False)  # the seed: do_not_specialize
    assert aot._specialize(2**31) == ("i64", True) and aot._specialize(0.1) == ("fp32", False)


def test_ci_subset_covers_every_config_and_value_in_offered_configs():
    picks = aot.ci_subset(OFFERED)
    for kernel in aot.KERNELS:
        for target in aot.TARGETS:
            mine = [c for c in picks if (c["kernel"], c["target"]) == (kernel, target)]
            assert {c["config"] for c in mine} == set(aot.candidate_configs(kernel))
            full = aot.full_matrix((target,), (kernel,))
            for field in ("precision", "head_dim", "layout", "dropout"):
                assert {c[field] for c in mine} == {c[field] for c in full}, (kernel, target, field)
            if kernel in aot.ATTENTION_KERNELS:                        # every offered config of the BERT cases
                for precision in ("fp16", "bf16"):
                    for dropout in (False, True):
                        case = attention.case_name(precision, 64, dropout)
                        assert set(OFFERED["offered"][kernel][target][case]) == {
                            c["config"] for c in mine if aot.case_name(c) == case}, (kernel, target, case)
            if kernel in aot.ATTENTION_KERNELS:                        # each config once where it is offered
                table = OFFERED["offered"][kernel][target]
                fallbacks = OFFERED["fallback"].get(kernel, {}).get(target, {})
                clean_somewhere = {c for case, configs in table.items() if case not in fallbacks for c in configs}
                for config in clean_somewhere:
                    assert [c for c in mine if c["config"] == config and config in table.get(aot.case_name(c), ())
                            and aot.case_name(c) not in fallbacks], (kernel, target, config)


# ----------------------------------------------------------------------------- what to offer, and the check

A, B, C, D, E = list(aot.candidate_configs("_attn_fwd"))[:5]              # in the candidates' order


def test_offered_tables_keep_the_clean_configs_or_the_least_spilling():
    results = [result(A, 0), result(A, 0, layout="varlen"), result(B, 8), result(C, 0, fits=False),
               result(D, ok=False), result(E, 0), result(E, 16, layout="varlen")]
    results += [result(c, s, dropout=True) for c, s in ((A, 64), (B, 32), (E, 32))]
    tables = aot.offered_tables(results)
    cases = tables["offered"]["_attn_fwd"]["sm_90"]
    assert cases["bf16/d64/no-dropout"] == [A]                         # E spills in one layout: out
    assert cases["bf16/d64/dropout"] == [B]                            # none clean: the first least-spilling
    assert tables["fallback"]["_attn_fwd"]["sm_90"] == {"bf16/d64/dropout": {"config": B, "stack": 32}}


def test_check_fails_on_errors_and_on_overflow_or_spill_in_offered_configs():
    offered = {"offered": {"_attn_fwd": {"sm_90": {"bf16/d64/no-dropout": [A, B], "bf16/d64/dropout": [C]}}},
               "fallback": {"_attn_fwd": {"sm_90": {"bf16/d64/dropout": {"config": C, "stack": 32}}}}}
    fine = [result(A), result(E, 512), result(E, fits=False), result(C, 32, dropout=True)]
    assert aot.failures(fine, offered) == []                           # E: not offered; C: its recorded spill
    bad = [result(B, 8), result(A, fits=False), result(E, ok=False), result(C, 64, dropout=True)]
    assert [why.split(":")[0] for _, why in aot.failures(bad, offered)] == [
        "spills", "shared memory 1000000 B > 232448 B", "CompilationError", "spills"]
    soft = lambda stack: result("16x256w8", stack, kernel="_softmax_fwd", head_dim=None)   # no autotuner: checked
    assert aot.failures([soft(8)], offered)
    offered["softmax_spills"] = {"_softmax_fwd": {"sm_90": {"16x256w8": 8}}}                  # a recorded exception
    assert not aot.failures([soft(8)], offered) and aot.failures([soft(16)], offered)


def test_fallbacks_are_compiled_in_every_layout_until_the_least_spilling_is_known(monkeypatch, tmp_path):
    """First pass: A spills 8 B in its first layout, B 16 B (both stop there); A, the fallback, spills 64 B in
    varlen once completed, so B is completed too and, at 16 B everywhere, becomes the fallback."""
    cases = [dict(kernel="_attn_fwd", target="sm_90", precision="bf16", head_dim=64, layout=layout, dropout=True,
                  config=c) for c in (A, B) for layout in aot.LAYOUTS]
    later = {A: 64, B: 16}
    asked = []

    def fake_compile(todo, jobs, done, path, stop_early=True):
        asked.append(sorted({c["config"] for c in todo}))
        return [result(c["config"], later[c["config"]] if c["layout"] == "varlen" else 8, layout=c["layout"],
                       dropout=True) for c in todo]
    monkeypatch.setattr(aot, "_compile_logged", fake_compile)
    first = [result(A, 8, dropout=True), result(B, 16, dropout=True)]
    done = aot._complete_fallbacks(cases, first, 1, tmp_path / "log")
    assert asked == [[A], [B]] and len(done) == 10
    assert aot.offered_tables(done)["fallback"]["_attn_fwd"]["sm_90"]["bf16/d64/dropout"] == {"config": B, "stack": 16}


def test_markdown_report_has_the_spill_table_and_a_row_per_case():
    results = [result(A, 0), result(B, 8), result(B, 0, layout="varlen"), result(C, ok=False),
               result("32x32w4s2", 16)]                                # not a pre-pruning config: not in "before"
    md = aot.markdown(results, aot.offered_tables(results), 12.0, "Report")
    assert "| _attn_fwd | sm_90 | all | 1 / 2 (8 B) | 0 / 1 (0 B) |" in md
    assert (f"| _attn_fwd | sm_90 | bf16/d64/no-dropout | {A} | {B} (8, mask), 32x32w4s2 (16, mask) | - | {C} | "
            "200 | wgmma |") in md


# ----------------------------------------------------------------------------- the autotuner's pruning hook

def _configs(kernel):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in attention.GPU_CONFIGS[kernel]]


def _name(c):
    return attention.config_name(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


@pytest.mark.parametrize("kernel", aot.ATTENTION_KERNELS)
def test_prune_hook_offers_the_committed_table(kernel, monkeypatch):
    monkeypatch.setattr(attention, "_table_target", lambda device: "sm_90")
    q = SimpleNamespace(dtype=torch.bfloat16, is_cuda=True, device="cuda:0")
    prune = attention._offered_only(kernel)
    kept = prune(_configs(kernel), {"Q": q}, HEAD_DIM=64, DROPOUT=True, HAS_MASK=True, VARLEN=False,
                 DOT_PRECISION="tf32")
    assert [_name(c) for c in kept] == OFFERED["offered"][kernel]["sm_90"]["bf16/d64/dropout"]
    monkeypatch.setattr(attention, "_MAX_CONFIGS", 1)
    assert len(prune(_configs(kernel), {"Q": q}, HEAD_DIM=64, DROPOUT=True, DOT_PRECISION="tf32")) == 1
    monkeypatch.setattr(attention, "_MAX_CONFIGS", None)
    monkeypatch.setattr(attention, "_table_target", lambda device: None)          # e.g. a Blackwell GPU
    assert len(prune(_configs(kernel), {"Q": q}, HEAD_DIM=64, DROPOUT=True, DOT_PRECISION="tf32")) == \
        len(attention.GPU_CONFIGS[kernel])


def test_offered_tables_name_only_candidates_and_cover_every_case():
    for kernel in aot.ATTENTION_KERNELS:
        names = set(aot.candidate_configs(kernel))
        for target in aot.TARGETS:
            table = OFFERED["offered"][kernel][target]
            for precision in ("fp16", "bf16", "fp32"):
                for d in aot.HEAD_DIMS:
                    for dropout in (False, True):
                        case = attention.case_name(precision, d, dropout)
                        assert table[case], (kernel, target, case)
                        assert set(table[case]) <= names


def test_the_bert_cases_have_clean_configs_on_both_targets():
    """D 64 in fp16 / bf16, with and without dropout: no fallback (a spilling config) there."""
    for kernel, targets in OFFERED["fallback"].items():
        for target, cases in targets.items():
            assert not [c for c in cases if c.split("/")[:2] in (["fp16", "d64"], ["bf16", "d64"])], \
                (kernel, target, cases)


# ----------------------------------------------------------------------------- the CI subset, compiled

@pytest.mark.slow
@pytest.mark.skipif(not TOOLS, reason="the triton wheel's ptxas / cuobjdump are not there")
def test_ci_subset_compiles_fits_and_does_not_spill(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")                  # compile from nothing, as CI does
    proc = subprocess.run([sys.executable, "-m", "bert_kernels.aot", "--subset", "ci", "--check", "--out",
                           str(tmp_path), "--jobs", str(os.cpu_count() or 1)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "aot_report.json").read_text())["results"]
    assert len(results) == len(aot.ci_subset(OFFERED))
    for kernel in aot.KERNELS:
        for target in aot.TARGETS:
            mine = [r for r in results if (r["kernel"], r["target"]) == (kernel, target)]
            assert {r["config"] for r in mine} == set(aot.candidate_configs(kernel))
            assert all(r["ok"] for r in mine), [r["error"] for r in mine if not r["ok"]]
            if kernel in aot.ATTENTION_KERNELS:
                tc = "wgmma" if target == "sm_90" else "mma"
                assert any(r["tc"] == tc for r in mine)                 # tensor cores, the target's own kind
                assert all(r["tc"] != "none" for r in mine if r["precision"] != "fp32")
    assert aot.failures(results, OFFERED) == []
