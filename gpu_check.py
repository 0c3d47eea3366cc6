"""One bounded GPU check: the kernels compiled and tested, benchmarked against SDPA, and bench.py, in <= 8 minutes.

    python gpu_check.py                      # on one H100/H200; writes runs/gpu_check-<date>-<time>/report.{md,json}
    python gpu_check.py OUT --budget 480     # into OUT; the whole check time-boxed to 480 s
    python gpu_check.py --parts env tests    # some parts only (--list names them)

The parts, in order, each a group of subprocesses with a time box (a part past its box, or past what is
left of the budget, is killed with its children and reported "timed out"; a part that fails is reported
and the next one runs anyway; a part that no time is left for is "skipped"):
  env            the device, driver and versions
  tests          the kernel tests compiled, a covering subset: tests/test_kernels.py in fp16 and bf16 (every
                 shape, no mask and a mask whose first row is all padding), dropout, all-padding rows,
                 T = 4096, non-contiguous inputs, a tiny BERT step through both backends; and the
                 variable-length kernel of tests/test_unpad.py. Sharded over parallel pytest processes
                 (compiling is CPU work: 16 cores do it at once), beside warm-up runs of the next parts'
                 kernels, so that they find their kernels compiled in Triton's cache
  bench_kernels  tests/bench_kernels.py, bf16, D 64, T 128 / 512 / 2048, forward and forward+backward:
                 the Triton kernel with and without the padding mask against SDPA with and without it
  bench_128      bench.py BERT-base MLM, bf16, seq 128 x batch 256, ours vs transformers, MFU
  bench_padded   the same, batch 64 of lengths uniform in 32..512 (right-padded; real tokens counted)
Then report.md (the figures, the issue-3 targets met or not, each part's status and time) and report.json
(everything, with each part's log file) in OUT, written again after every part, so that even a check
killed from outside leaves a report of what it did.

Also a pytest plugin (`-p gpu_check`, with GPU_CHECK_SHARD=i/n): the tests part's shards keep every n-th
test from the i-th, in the order collected.
"""
import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BUDGET_S = 480
PY = sys.executable

# the tests part: these files, these tests (-k: a module's name is one of its tests' keywords); the shards
# autotune over the first offered config only (BERT_KERNELS_MAX_CONFIGS=1: a compile per kernel and case, not six)
TEST_FILES = ["tests/test_kernels.py", "tests/test_unpad.py"]
TEST_K = ("(test_kernels and ((matches_reference and (none or random) and (fp16 or bf16)) or all_padding or dropout "
          "or long_sequence or non_contiguous or expanded or scale_and or direct_call or tiny_bert)) "
          "or varlen_triton_matches")
BENCH_KERNELS_K = "attention and bf16 and not eager"
BENCH_ARGS = ["--model", "bert", "--objective", "mlm", "--preset", "base", "--precision", "bf16"]
# name: (shape arguments, batch size)
BENCH_RUNS = {"bench_128": (["--seq-len", "128"], 256),
              "bench_padded": (["--seq-len", "512", "--padding", "--min-len", "32"], 64)}
TARGETS = {"fwd+bwd, mask, T=512: Triton / SDPA with the mask": 1.3, "fwd, no mask, T=2048: TFLOP/s": 350.0,
           "bench.py seq 128: ours / transformers": 2.0, "bench.py seq 128: MFU": 0.5}


# ----------------------------------------------------------------------------- the parts

def _pytest(*args):
    return [PY, "-m", "pytest", "-p", "no:cacheprovider", *args]


def _bench_py(out_json, extra):
    """bench.main with `extra` arguments, its result dict saved as JSON (the table is printed as always)."""
    code = ("import json, sys; import bench; r = bench.main(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(json.dumps(r, default=str))")
    return [PY, "-c", code, str(out_json), *BENCH_ARGS, *extra]


def gpu_parts(out, shards=None):
    """The parts of the check: [{name, box (s), what, jobs: [(label, argv, extra env)], figures(out) -> dict}]."""
    shards = shards or max(1, min(8, (os.cpu_count() or 4) - 4))
    env_code = ("import json, torch, triton, transformers; p = torch.cuda.get_device_properties(0); "
                "print(json.dumps(dict(device=torch.cuda.get_device_name(0), capability='.'.join(map(str, "
                "torch.cuda.get_device_capability(0))), memory_GiB=round(p.total_memory / 2**30, 1), "
                "sms=p.multi_processor_count, torch=torch.__version__, cuda=torch.version.cuda, "
                "triton=triton.__version__, transformers=transformers.__version__)))")
    test_jobs = [(f"tests shard {i + 1} of {shards}", _pytest(*TEST_FILES, "-v", "-k", TEST_K, "-p", "gpu_check"),
                  {"GPU_CHECK_SHARD": f"{i}/{shards}", "BERT_KERNELS_MAX_CONFIGS": "1"}) for i in range(shards)]
    warm = [("warm-up bench_kernels", _pytest("tests/bench_kernels.py", "-q", "-k", "attention and bf16 and triton",
                                              "--benchmark-disable"), {})]
    warm += [(f"warm-up {name}", _bench_py(out / f"warmup_{name}.json",
                                           shape + ["--batch-size", "8", "--steps", "1", "--warmup", "1"]), {})
             for name, (shape, _) in BENCH_RUNS.items()]
    parts = [
        dict(name="env", box=30, what="device and versions", jobs=[("env", [PY, "-c", env_code], {})],
             figures=env_figures),
        dict(name="tests", box=170, what="kernel tests compiled (covering subset), sharded; warm-ups beside",
             jobs=test_jobs + warm, figures=test_figures),
        dict(name="bench_kernels", box=100, what="tests/bench_kernels.py: Triton vs SDPA, bf16, D 64",
             jobs=[("bench_kernels", _pytest("tests/bench_kernels.py", "-q", "-k", BENCH_KERNELS_K,
                                             "--benchmark-only", f"--benchmark-json={out / 'bench_kernels.json'}"),
                    {})], figures=bench_kernels_figures),
    ]
    for name, (shape, batch) in BENCH_RUNS.items():
        extra = shape + ["--batch-size", str(batch), "--steps", "20", "--warmup", "3"]
        parts.append(dict(name=name, box=85, what=f"bench.py {' '.join(BENCH_ARGS + extra)}",
                          jobs=[(name, _bench_py(out / f"{name}.json", extra), {})],
                          figures=lambda out, logs, name=name: bench_figures(out / f"{name}.json")))
    return parts


# ----------------------------------------------------------------------------- running them, time-boxed

def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_part(part, out, deadline):
    """Start the part's jobs side by side, each in its own process group with its log in OUT; wait until
    all are done or the box (or the budget) runs out, then kill what is left. Never raises for a job's sake."""
    t0 = time.monotonic()
    limit = min(part["box"], deadline - t0)
    result = dict(name=part["name"], what=part["what"], box_s=part["box"], jobs=[], figures={})
    if limit <= 1:
        result.update(status="skipped", seconds=0.0, note="no time left in the budget")
        return result
    procs = []
    for label, argv, env in part["jobs"]:
        log = out / f"{re.sub(r'[^A-Za-z0-9]+', '_', label).strip('_')}.log"
        with open(log, "w") as f:
            try:
                p = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **env})
            except OSError as e:
                f.write(f"could not start: {e}\n")
                p = None
        procs.append((label, p, log))
    timed_out = False
    for label, p, log in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=max(0.0, t0 + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(p)
            p.wait()
        _kill_group(p)                                      # what it left running, e.g. compiler processes
    for label, p, log in procs:
        rc = None if p is None else p.returncode
        result["jobs"].append(dict(label=label, rc=rc, log=log.name, tail=_tail(log)))
    result["seconds"] = round(time.monotonic() - t0, 1)
    failed = [j for j in result["jobs"] if j["rc"] != 0]
    result["status"] = "timed out" if timed_out else "failed" if failed else "passed"
    try:
        result["figures"] = part["figures"](out, [log for _, _, log in procs]) or {}
    except Exception as e:  # a part's figures that cannot be read are reported, never fatal
        result["figures"] = {"error": f"{type(e).__name__}: {e}"}
    return result


def _tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_check(parts, out, budget=BUDGET_S, meta=None):
    """Run the parts in order within `budget` seconds, writing the report after each one. Returns its dict."""
    t0 = time.monotonic()
    deadline = t0 + budget - 5                           # the last seconds are the report's
    report = dict(meta or {}, budget_s=budget, started=datetime.datetime.now().isoformat(timespec="seconds"),
                  parts=[])
    for part in parts:
        report["parts"].append(run_part(part, out, deadline))
        report["seconds"] = round(time.monotonic() - t0, 1)
        write_report(out, report)
    return report


# ----------------------------------------------------------------------------- reading the figures

def env_figures(out, logs):
    for line in reversed(Path(logs[0]).read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


_TEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def test_figures(out, logs):
    """Counts per outcome over the shards' verbose logs (partial logs of killed shards count what they did),
    the failing tests by name, and the warm-ups' exit state."""
    counts, failed = {}, []
    for log in logs:
        for line in Path(log).read_text(errors="replace").splitlines():
            m = _TEST_LINE.match(line)
            if m:
                counts[m[2]] = counts.get(m[2], 0) + 1
                if m[2] in ("FAILED", "ERROR"):
                    failed.append(m[1])
    return dict(counts=counts, failed=sorted(failed))


def bench_kernels_figures(out, logs):
    """{(mode, T): {provider: {"ms", "TFLOP/s", "peak_MiB"}}} from pytest-benchmark's JSON, and the ratios."""
    path = out / "bench_kernels.json"
    if not path.exists():
        return {}
    rows = {}
    for b in json.loads(path.read_text())["benchmarks"]:
        m = re.match(r"attention (\S+) T=(\d+) (\S+)", b["group"] or "")
        if not m:
            continue
        provider = b["params"]["provider"]
        rows.setdefault(f"{m[1]} T={m[2]}", {})[provider] = {
            "ms": round(1000 * b["stats"]["median"], 3), "TFLOP/s": b["extra_info"].get("TFLOP/s"),
            "peak_MiB": b["extra_info"].get("peak_mem_MiB")}
    for row in rows.values():
        for other in ("sdpa_mask", "sdpa_nomask"):
            mine = "triton" if other == "sdpa_mask" else "triton_nomask"
            if mine in row and other in row:
                row[f"{mine} speedup vs {other}"] = round(row[other]["ms"] / row[mine]["ms"], 3)
    return rows


def bench_figures(path):
    if not Path(path).exists():
        return {}
    r = json.loads(Path(path).read_text())
    sides = {name: {k: row[k] for k in ("tokens_per_s", "ms", "mfu", "peak_bytes") if k in row}
             for name, row in r["rows"].items()}
    return dict(sides=sides, ratio=r["ratio"], flops_per_token=r["flops_per_token"], batch_size=r["batch_size"],
                precision=r["precision"])


def targets(report):
    """[(target, threshold, value or None)]: the issue-3 / issue-14 targets this run can say something about."""
    figs = {p["name"]: p["figures"] for p in report["parts"]}
    kb = figs.get("bench_kernels", {})
    b128 = figs.get("bench_128", {})
    values = [kb.get("fwd+bwd T=512", {}).get("triton speedup vs sdpa_mask"),
              kb.get("fwd T=2048", {}).get("triton_nomask", {}).get("TFLOP/s"),
              b128.get("ratio"), b128.get("sides", {}).get("ours", {}).get("mfu")]
    return [(name, threshold, value) for (name, threshold), value in zip(TARGETS.items(), values)]


# ----------------------------------------------------------------------------- the report

def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def markdown(report):
    env = next((p["figures"] for p in report["parts"] if p["name"] == "env"), {})
    lines = ["# GPU check", "",
             f"{report['started']}, {env.get('device', 'device unknown')} (capability {env.get('capability', '?')}), "
             f"torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, Triton {env.get('triton', '?')}, "
             f"transformers {env.get('transformers', '?')}; `{report.get('command', 'python gpu_check.py')}`; "
             f"{_fmt(report.get('seconds'), '.0f')} s of a {report['budget_s']} s budget.", "",
             "| part | status | seconds (box) | what |", "|---|---|---|---|"]
    for p in report["parts"]:
        lines.append(f"| {p['name']} | {p['status']} | {_fmt(p.get('seconds'), '.0f')} ({p['box_s']}) | {p['what']} |")
    lines += ["", "## Targets", "", "| target | needs | this run | met |", "|---|---|---|---|"]
    for name, threshold, value in targets(report):
        met = "-" if value is None else "yes" if value >= threshold else "NO"
        lines.append(f"| {name} | >= {threshold:g} | {_fmt(value, '.3g')} | {met} |")
    for p in report["parts"]:
        f = p["figures"]
        if p["name"] == "tests" and f.get("counts") is not None:
            lines += ["", "## Kernel tests, compiled", "",
                      ", ".join(f"{n} {k.lower()}" for k, n in sorted(f["counts"].items())) or "no test ran"]
            lines += [f"- FAILED {name}" for name in f.get("failed", [])]
        elif p["name"] == "bench_kernels" and f and "error" not in f:
            lines += ["", "## Attention kernels vs SDPA (bf16, D 64, H 12, 16k tokens, ~30% padding)", "",
                      "median ms (TFLOP/s over the full T x T); speedup = SDPA's time / Triton's", "",
                      "| mode, T | triton (mask) | sdpa_mask | speedup | triton_nomask | sdpa_nomask | speedup |",
                      "|---|---|---|---|---|---|---|"]
            for key, row in f.items():
                cell = lambda prov: (f"{row[prov]['ms']:.3f} ({_fmt(row[prov]['TFLOP/s'], '.0f')})"
                                     if prov in row else "-")
                lines.append(f"| {key} | {cell('triton')} | {cell('sdpa_mask')} | "
                             f"{_fmt(row.get('triton speedup vs sdpa_mask'))}x | {cell('triton_nomask')} | "
                             f"{cell('sdpa_nomask')} | {_fmt(row.get('triton_nomask speedup vs sdpa_nomask'))}x |")
        elif p["name"].startswith("bench_") and f.get("sides"):
            lines += ["", f"## {p['what']}", "", "| side | tokens/s | ms/step | MFU | peak memory |",
                      "|---|---|---|---|---|"]
            for side, r in f["sides"].items():
                peak = r.get("peak_bytes")
                lines.append(f"| {side} | {_fmt(r.get('tokens_per_s'), ',.0f')} | {_fmt(r.get('ms'), '.1f')} | "
                             f"{_fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.1f')}% | "
                             f"{'-' if peak is None else f'{peak / 2**30:.2f} GiB'} |")
            lines.append(f"| ours/transformers | {_fmt(f['ratio'])}x | | | |")
    problems = [p for p in report["parts"] if p["status"] != "passed"]
    if problems:
        lines += ["", "## Parts that did not pass", ""]
        for p in problems:
            lines += [f"### {p['name']}: {p['status']}{': ' + p['note'] if p.get('note') else ''}", ""]
            for j in p["jobs"]:
                if j["rc"] != 0:
                    lines += [f"{j['label']} (exit {j['rc']}, log {j['log']}):", "", "```", j["tail"], "```", ""]
    return "\n".join(lines) + "\n"


def write_report(out, report):
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="report folder (default: a new runs/gpu_check-<date>-<time>)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for everything (default {BUDGET_S})")
    p.add_argument("--parts", nargs="+", help="run only these parts (default: all, in order)")
    p.add_argument("--shards", type=int, help="parallel pytest processes in the tests part (default: cores - 4, "
                   "at most 8)")
    p.add_argument("--list", action="store_true", help="print the parts and their commands, run nothing")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be a positive number of seconds, got {args.budget:g}")
    if args.shards is not None and args.shards < 1:
        p.error(f"--shards must be at least 1, got {args.shards}")
    names = [part["name"] for part in gpu_parts(Path("."), 1)]
    unknown = [n for n in args.parts or () if n not in names]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(names)}")
    return args


def default_out():
    return ROOT / "runs" / datetime.datetime.now().strftime("gpu_check-%Y%m%d-%H%M%S")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out) if args.out else default_out()
    out = out.resolve()
    parts = [p for p in gpu_parts(out, args.shards) if not args.parts or p["name"] in args.parts]
    if args.list:
        for p in parts:
            print(f"{p['name']} (box {p['box']} s): {p['what']}")
            for label, argv, env in p["jobs"]:
                print(f"  {label}: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(argv)}")
        return 0
    if out.exists() and any(out.iterdir()):
        sys.exit(f"gpu_check.py: error: {out} is not empty; give a new folder (or none: one is made under runs/)")
    out.mkdir(parents=True, exist_ok=True)
    command = "python gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run_check(parts, out, args.budget, dict(command=command.strip()))
    print(markdown(report))
    print(f"report: {out / 'report.md'}, {out / 'report.json'}")
    return 0 if all(p["status"] == "passed" for p in report["parts"]) else 1


# ----------------------------------------------------------------------------- the pytest plugin

def pytest_collection_modifyitems(config, items):
    """With GPU_CHECK_SHARD=i/n, keep the tests i, i+n, i+2n, ... of those collected (pytest -p gpu_check)."""
    shard = os.environ.get("GPU_CHECK_SHARD")
    if not shard:
        return
    i, n = (int(x) for x in shard.split("/"))
    keep = items[i::n]
    config.hook.pytest_deselected(items=[it for it in items if it not in keep])
    items[:] = keep


if __name__ == "__main__":
    sys.exit(main())
