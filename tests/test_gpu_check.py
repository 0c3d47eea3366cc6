"""gpu_check.py without a GPU: its arguments, the time boxes, a failing part reported while the others still
run, the report, the figures read from each part's output, the shard plugin, and the test selection it
would run on a GPU -- with the parts faked by small commands."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import gpu_check

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def part(name, code, box=30, figures=None):
    return dict(name=name, box=box, what=f"fake {name}", jobs=[(name, [PY, "-c", code], {})],
                figures=figures or (lambda out, logs: {}))


# ----------------------------------------------------------------------------- arguments

def test_arguments(capsys):
    args = gpu_check.parse_args([])
    assert args.out is None and args.budget == gpu_check.BUDGET_S == 480
    assert gpu_check.default_out().parent == ROOT / "runs" and gpu_check.default_out().name.startswith("gpu_check-")
    assert gpu_check.parse_args(["somewhere", "--budget", "60", "--parts", "env", "tests"]).parts == ["env", "tests"]
    for bad, message in ((["--budget", "0"], "--budget must be a positive"), (["--parts", "nope"], "unknown part"),
                         (["--shards", "0"], "--shards must be at least 1")):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)
        assert message in capsys.readouterr().err


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(SystemExit, match="is not empty"):
        gpu_check.main([str(tmp_path), "--parts", "env"])


def test_list_names_every_part_and_its_commands(capsys, tmp_path):
    assert gpu_check.main([str(tmp_path / "out"), "--list"]) == 0
    text = capsys.readouterr().out
    for name in ("env", "tests", "bench_kernels", "bench_128", "bench_padded"):
        assert f"{name} (box" in text
    assert "GPU_CHECK_SHARD=0/" in text and "--benchmark-json=" in text and "--batch-size 256" in text
    assert not (tmp_path / "out").exists()                             # --list runs nothing


def test_the_boxes_fit_the_budget():
    parts = gpu_check.gpu_parts(Path("out"), 4)
    assert sum(p["box"] for p in parts) <= gpu_check.BUDGET_S - 5
    assert [p["name"] for p in parts] == ["env", "tests", "bench_kernels", "bench_128", "bench_padded"]


# ----------------------------------------------------------------------------- running, time-boxed

def test_parts_run_in_order_a_failing_one_is_reported_and_the_rest_still_run(tmp_path):
    parts = [part("one", "print('hello')", figures=lambda out, logs: {"said": Path(logs[0]).read_text().strip()}),
             part("two", "import sys; print('broken'); sys.exit(3)"),
             part("three", "print('still here')", figures=lambda out, logs: 1 / 0)]
    report = gpu_check.run_check(parts, tmp_path, budget=60)
    one, two, three = report["parts"]
    assert (one["status"], one["figures"]) == ("passed", {"said": "hello"})
    assert two["status"] == "failed" and two["jobs"][0]["rc"] == 3 and "broken" in two["jobs"][0]["tail"]
    assert three["status"] == "passed" and three["figures"]["error"].startswith("ZeroDivisionError")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [p["status"] for p in saved["parts"]] == ["passed", "failed", "passed"]
    md = (tmp_path / "report.md").read_text()
    assert "| two | failed |" in md and "two (exit 3" in md and "broken" in md


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_part_past_its_box_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    parts = [part("slow", code, box=3), part("after", "print('ran')")]
    report = gpu_check.run_check(parts, tmp_path, budget=60)
    assert [p["status"] for p in report["parts"]] == ["timed out", "passed"]
    child = int(pid_file.read_text())
    for _ in range(50):                                                # the kill is asynchronous: let it land
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def test_parts_past_the_budget_are_skipped(tmp_path):
    parts = [part("first", "import time; time.sleep(60)", box=60), part("second", "print('never')")]
    report = gpu_check.run_check(parts, tmp_path, budget=8)              # 3 s for the parts, 5 for the report
    assert [p["status"] for p in report["parts"]] == ["timed out", "skipped"]
    assert report["parts"][1]["note"] == "no time left in the budget"
    assert "| second | skipped |" in (tmp_path / "report.md").read_text()


def test_jobs_of_a_part_run_side_by_side(tmp_path):
    stamp = "import time; open(r'{}', 'w').write(str(time.time())); time.sleep(2)"
    side = dict(name="side", box=30, what="two at once", figures=lambda out, logs: {},
                jobs=[(f"job {i}", [PY, "-c", stamp.format(tmp_path / f"t{i}")], {"EXTRA": str(i)}) for i in (1, 2)])
    result = gpu_check.run_part(side, tmp_path, time.monotonic() + 60)
    assert result["status"] == "passed" and [j["label"] for j in result["jobs"]] == ["job 1", "job 2"]
    starts = [float((tmp_path / f"t{i}").read_text()) for i in (1, 2)]
    assert abs(starts[0] - starts[1]) < 2                               # the second did not wait for the first


def test_main_writes_the_report_and_exits_1_when_a_part_failed(tmp_path, monkeypatch, capsys):
    fakes = [part("env", "print('{\"device\": \"Fake GPU\", \"capability\": \"9.0\"}')", figures=gpu_check.env_figures),
             part("tests", "import sys; sys.exit(1)")]
    monkeypatch.setattr(gpu_check, "gpu_parts", lambda out, shards=None: fakes)
    out = tmp_path / "check"
    assert gpu_check.main([str(out), "--budget", "60"]) == 1
    md = (out / "report.md").read_text()
    assert "Fake GPU (capability 9.0)" in md and "| tests | failed |" in md
    assert json.loads((out / "report.json").read_text())["command"].endswith("--budget 60")


# ----------------------------------------------------------------------------- the figures of each part

def test_test_figures_count_the_outcomes_of_every_shard(tmp_path):
    (tmp_path / "a.log").write_text("tests/test_kernels.py::test_x[fp16] PASSED [ 50%]\n"
                                    "tests/test_kernels.py::test_y[bf16] FAILED [100%]\n"
                                    "FAILED tests/test_kernels.py::test_y[bf16] - AssertionError\n")
    (tmp_path / "b.log").write_text("tests/test_unpad.py::test_v SKIPPED (no)   [100%]\n")  # killed shards count too
    figures = gpu_check.test_figures(tmp_path, [tmp_path / "a.log", tmp_path / "b.log"])
    assert figures == {"counts": {"PASSED": 1, "FAILED": 1, "SKIPPED": 1},
                       "failed": ["tests/test_kernels.py::test_y[bf16]"]}


def _benchmark(group, provider, median, tflops):
    return {"group": group, "params": {"provider": provider}, "stats": {"median": median},
            "extra_info": {"TFLOP/s": tflops, "peak_mem_MiB": 10.0}}


def test_kernel_benchmarks_and_bench_py_figures_and_the_targets(tmp_path):
    rows = [_benchmark("attention fwd+bwd T=512 bf16", "triton", 0.002, 200.0),
            _benchmark("attention fwd+bwd T=512 bf16", "sdpa_mask", 0.003, 133.0),
            _benchmark("attention fwd T=2048 bf16", "triton_nomask", 0.001, 400.0),
            _benchmark("attention fwd T=2048 bf16", "sdpa_nomask", 0.0012, 333.0)]
    (tmp_path / "bench_kernels.json").write_text(json.dumps({"benchmarks": rows}))
    kb = gpu_check.bench_kernels_figures(tmp_path, [])
    assert kb["fwd+bwd T=512"]["triton speedup vs sdpa_mask"] == 1.5
    assert kb["fwd T=2048"]["triton_nomask"] == {"ms": 1.0, "TFLOP/s": 400.0, "peak_MiB": 10.0}
    (tmp_path / "b.json").write_text(json.dumps({
        "rows": {"ours": {"tokens_per_s": 5e5, "ms": 60.0, "mfu": 0.45, "peak_bytes": 2**31, "lo": 1, "hi": 2},
                 "HF": {"tokens_per_s": 2e5, "ms": 150.0, "mfu": 0.18, "peak_bytes": None}},
        "ratio": 2.5, "flops_per_token": 5.45e8, "batch_size": 256, "precision": "bf16"}))
    b = gpu_check.bench_figures(tmp_path / "b.json")
    assert b["ratio"] == 2.5 and b["sides"]["ours"] == {"tokens_per_s": 5e5, "ms": 60.0, "mfu": 0.45, "peak_bytes": 2**31}
    report = dict(started="now", budget_s=480, seconds=400.0, parts=[
        dict(name="bench_kernels", status="passed", seconds=90, box_s=100, what="kernels", jobs=[], figures=kb),
        dict(name="bench_128", status="passed", seconds=60, box_s=85, what="bench.py seq 128", jobs=[], figures=b)])
    assert [v for _, _, v in gpu_check.targets(report)] == [1.5, 400.0, 2.5, 0.45]
    md = gpu_check.markdown(report)
    assert "| fwd+bwd, mask, T=512: Triton / SDPA with the mask | >= 1.3 | 1.5 | yes |" in md
    assert "| bench.py seq 128: MFU | >= 0.5 | 0.45 | NO |" in md
    assert "| ours | 500,000 | 60.0 | 45.0% | 2.00 GiB |" in md and "| ours/transformers | 2.50x |" in md
    assert "| fwd+bwd T=512 | 2.000 (200) | 3.000 (133) | 1.50x |" in md


def test_missing_outputs_give_no_figures_and_a_dash_in_the_report(tmp_path):
    assert gpu_check.bench_kernels_figures(tmp_path, []) == {} and gpu_check.bench_figures(tmp_path / "no") == {}
    report = dict(started="now", budget_s=480, parts=[])
    assert "| bench.py seq 128: ours / transformers | >= 2 | - | - |" in gpu_check.markdown(report)


# ----------------------------------------------------------------------------- the shards and the selection

def test_shard_plugin_keeps_every_nth_test(monkeypatch):
    deselected = []
    config = SimpleNamespace(hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)))
    items = list(range(10))
    monkeypatch.setenv("GPU_CHECK_SHARD", "1/3")
    gpu_check.pytest_collection_modifyitems(config, items)
    assert items == [1, 4, 7] and sorted(deselected) == [0, 2, 3, 5, 6, 8, 9]
    monkeypatch.delenv("GPU_CHECK_SHARD")
    items = list(range(4))
    gpu_check.pytest_collection_modifyitems(config, items)
    assert items == [0, 1, 2, 3]


def _collect(*extra, env=None):
    proc = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           *gpu_check.TEST_FILES, "-k", gpu_check.TEST_K, *extra], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_the_tests_part_selects_the_covering_subset_and_shards_split_it():
    ids = _collect()
    joined = "\n".join(ids)
    for needed in ("bf16", "fp16", "random", "long_sequence_gpu", "all_padding", "dropout", "varlen_triton_matches",
                   "tiny_bert_trains_identically", "test_masked_softmax_matches_reference"):
        assert needed in joined, needed
    assert not [i for i in ids if "test_unpad.py" in i and "varlen_triton_matches" not in i]   # CPU-only there
    assert not [i for i in ids if "matches_reference[" in i and "fp32" in i]
    shards = [_collect("-p", "gpu_check", env={"GPU_CHECK_SHARD": f"{i}/3"}) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(ids) and all(shards)
