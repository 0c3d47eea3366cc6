"""train.py under the accidents of real runs: SIGKILL at any step, a kill in the middle of a
checkpoint write, SIGTERM from a preempting scheduler, non-finite losses, and torchrun (DDP,
gloo on the CPU). Every comparison is bit for bit (CPU, fp32) unless it says otherwise.

The runs that get killed are separate processes started with a small driver that patches one
function to kill its own process at the chosen moment; the runs they are compared with go
through the same driver, so that every run sees the same threads and the same code."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bert
import train
from test_train import base_args, records, write_corpus

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("tokens_per_s", "data_ms", "step_ms")

DRIVER = r'''
import os, signal, sys
sys.path.insert(0, os.environ["REPO"])
import torch, train
mode, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = [0]
if mode in ("kill-at-step", "term-at-step"):      # before the at-th optimizer update is applied
    real_step = torch.optim.AdamW.step
    def step(self, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL if mode == "kill-at-step" else signal.SIGTERM)
        return real_step(self, *a, **k)
    torch.optim.AdamW.step = step
elif mode == "kill-in-save":                      # half-way through writing the at-th training state
    real_save = torch.save
    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 half a file")
                out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
try:
    train.main(argv)
except train.TrainingStopped as e:
    print(f"train.py: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
'''


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One corpus and token cache for the whole module (the subprocesses find the cache via BERT_CACHE)."""
    root = tmp_path_factory.mktemp("resilience")
    return write_corpus(root / "text"), root / "cache"


@pytest.fixture
def corpus(shared, monkeypatch):
    monkeypatch.setattr(train.data, "CACHE_DIR", shared[1])
    return shared[0]


def env(cache):
    return {**os.environ, "REPO": str(ROOT), "BERT_CACHE": str(cache), "OMP_NUM_THREADS": "2",
            "TOKENIZERS_PARALLELISM": "false"}


def drive(corpus, mode, at, argv, expect_rc=0):
    driver = corpus.parent / "driver.py"
    driver.write_text(DRIVER)
    r = subprocess.run([sys.executable, str(driver), mode, str(at), *argv], capture_output=True, text=True,
                       env=env(corpus.parent / "cache"), cwd=ROOT, timeout=300)
    assert r.returncode == expect_rc, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def straight(shared):
    """The uninterrupted run that the killed, stopped and resumed ones are compared with."""
    out = shared[0].parent / "straight"
    drive(shared[0], "none", 0, base_args(shared[0], out, **COMMON))
    return out


def assert_same_run(a, b, after_step=0):
    """Same final weights, bit for bit, and the same metrics.jsonl records (timings aside)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rs if r["step"] > after_step]
    ra, rb = strip(records(a)), strip(records(b))
    assert ra == rb and len(ra) > 0


COMMON = {"--steps": "16", "--save-every": "5", "--eval-every": "8", "--log-every": "1", "--show": "0"}


def test_sigkill_at_any_step_then_resume_is_exact(corpus, straight, tmp_path):
    """Killed (SIGKILL) before the update of step 13, resumed from the step-10 checkpoint: the same
    weights and the same metrics for steps 11..16 as a run never stopped."""
    killed = tmp_path / "killed"
    r = drive(corpus, "kill-at-step", 13, base_args(corpus, killed, **COMMON), expect_rc=-signal.SIGKILL)
    assert train.latest_checkpoint(killed).name == "step_0000010"
    assert max(rec["step"] for rec in records(killed)) == 12          # steps 11, 12 were logged, then lost
    drive(corpus, "none", 0, base_args(corpus, killed, **COMMON, **{"--resume": True}))
    assert_same_run(straight, killed)


def test_kill_during_checkpoint_write_keeps_the_previous_one(corpus, straight, tmp_path):
    """A SIGKILL half-way through writing the step-10 checkpoint: the step-5 one is intact and loads,
    the half-written one is never taken for a checkpoint, and resuming gives the uninterrupted run."""
    killed = tmp_path / "killed"
    drive(corpus, "kill-in-save", 2, base_args(corpus, killed, **COMMON), expect_rc=-signal.SIGKILL)
    ckpts = killed / "checkpoints"
    assert [p.name for p in ckpts.glob("step_*")] == ["step_0000005"]
    half = list(ckpts.glob(".tmp-step_0000010-*"))
    assert len(half) == 1 and (half[0] / "training_state.pt").read_bytes().startswith(b"PK\x03\x04 half")
    good = ckpts / "step_0000005"
    model = bert.BertForPreTraining.from_pretrained(good)                 # the previous checkpoint loads
    state = torch.load(good / "training_state.pt", weights_only=True)
    assert state["step"] == 5 and all(torch.isfinite(p).all() for p in model.parameters())
    drive(corpus, "none", 0, base_args(corpus, killed, **COMMON, **{"--resume": True}))
    assert not list(ckpts.glob(".tmp-*"))                                # the debris is cleaned up
    assert_same_run(straight, killed)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus, straight, tmp_path):
    """SIGTERM during the update of step 7 (after the step's stop check): step 8 runs, a checkpoint of
    step 8 is written, the process says so and exits with 128 + 15 and no traceback; --resume then
    finishes the run exactly."""
    stopped = tmp_path / "stopped"
    r = drive(corpus, "term-at-step", 7, base_args(corpus, stopped, **COMMON), expect_rc=128 + signal.SIGTERM)
    assert "received SIGTERM" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert "stopped by SIGTERM at step 8" in r.stderr and "--resume" in r.stderr
    assert train.latest_checkpoint(stopped).name == "step_0000008"
    drive(corpus, "none", 0, base_args(corpus, stopped, **COMMON, **{"--resume": True}))
    assert_same_run(straight, stopped)


def poison(monkeypatch, bad_calls):
    """BertForPreTraining's loss becomes NaN on the given forward calls (1-based, training and eval alike)."""
    real, calls = bert.BertForPreTraining.forward, [0]

    def forward(self, *a, **k):
        out = real(self, *a, **k)
        if self.training:
            calls[0] += 1
            if calls[0] in bad_calls:
                return out._replace(loss=out.loss * float("nan"))
        return out
    monkeypatch.setattr(bert.BertForPreTraining, "forward", forward)


def test_non_finite_steps_are_skipped_and_counted(corpus, tmp_path, monkeypatch):
    poison(monkeypatch, {4, 5})
    updates = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: updates.append(1) or real_step(self, *a, **k))
    out = tmp_path / "run"
    model = train.main(base_args(corpus, out, **{**COMMON, "--steps": "10"}))
    assert len(updates) == 10 - 2                                   # the two bad steps changed nothing
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logs = {r["step"]: r for r in records(out) if "loss" in r or "skipped_steps" in r}
    assert "loss" not in logs[4] and "loss" not in logs[5]           # nothing to average on a skipped step
    assert logs[5]["skipped_steps"] == 2 and logs[10]["skipped_steps"] == 2
    assert all(r["loss"] == r["loss"] for r in logs.values() if "loss" in r)   # no NaN logged


def test_too_many_bad_steps_stop_the_run_and_keep_the_good_checkpoint(corpus, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(7, 100)))
    out = tmp_path / "run"
    with pytest.raises(train.TrainingStopped, match=r"step 9: 3 steps in a row .* last good checkpoint is .*step_0000005"):
        train.main(base_args(corpus, out, **{**COMMON, "--max-bad-steps": "3"}))
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_0000005"]
    weights = load_file(out / "checkpoints" / "step_0000005" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_model_with_non_finite_weights_is_never_saved(corpus, tmp_path):
    out = tmp_path / "run"
    model = train.main(base_args(corpus, out, **{**COMMON, "--steps": "5"}))
    before = (out / "checkpoints" / "step_0000005" / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    args = train.parse_args(base_args(corpus, out, **{**COMMON, "--steps": "5"}))
    with pytest.raises(train.TrainingStopped, match="weights are not finite.*step_0000005"):
        train.save_checkpoint(out, 5, model, None, None, None, None, args)
    assert (out / "checkpoints" / "step_0000005" / "model.safetensors").read_bytes() == before
    assert not (out / "checkpoints" / "step_0000006").exists()


# ----------------------------------------------------------------------------- torchrun (DDP, gloo)

NO_DROPOUT = ["--set", "hidden_dropout_prob=0", "--set", "attention_probs_dropout_prob=0"]


def launch(cmds, env_, timeout=240):
    """Run the commands side by side; [(returncode, stdout, stderr)]. Whatever happens (a timeout, a failed
    assertion, Ctrl-C), no process they started outlives this call: each job carries a tag in its environment,
    which torchrun's workers inherit (they run in sessions of their own), and every process with it is killed."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    procs = []
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**env_, "TEST_ELASTIC_JOB": tag}, cwd=ROOT))
        deadline = time.monotonic() + timeout
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
        return [(p.returncode, *o) for p, o in zip(procs, outs)]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for pid in tagged(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tagged(tag):
    """The processes whose environment holds TEST_ELASTIC_JOB=tag (Linux /proc; none where there is no /proc)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"TEST_ELASTIC_JOB={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def torchrun(corpus, argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "train.py", *argv, "--device", "cpu"]
    [(rc, stdout, stderr)] = launch([cmd], {**env(corpus.parent / "cache"), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert rc == 0, stderr[-3000:]
    return stdout


def test_batches_of_ranks_are_the_micro_batches_of_one_process(corpus, tmp_path):
    """The data contract DDP relies on: rank r's batch at step s is one process's batch at step s*W + r."""
    tok = train.tokenizers_lib.train([str(corpus / "corpus.txt")], kind="wordpiece", vocab_size=200)
    corpus_, _ = train.data.build_cache([corpus / "corpus.txt"], tok, tmp_path / "cache")
    masker = train.data.Masker(tok.vocab_size, tok.mask_id, tok.special_ids)
    kw = dict(tok=tok, objective="mlm+nsp", seq_len=48, batch_size=4, masker=masker, seed=3)
    one = train.data.PretrainingBatches(corpus_, **kw)
    ranks = [train.data.PretrainingBatches(corpus_, rank=r, world_size=2, **kw) for r in range(2)]
    for s in (0, 1, 7):
        for r in range(2):
            a, b = ranks[r].get_batch(s), one.get_batch(2 * s + r)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(corpus, tmp_path):
    """torchrun --nproc_per_node 2 (batch 8 each) follows the loss trajectory of one process with
    batch 8 x 2 accumulated micro-batches, within float tolerance (the gradient sums differ in order);
    only rank 0 writes; and a DDP run resumed from its step-5 checkpoint equals the uninterrupted one."""
    args = dict(COMMON, **{"--steps": "10", "--eval-every": "10"})
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    drive(corpus, "none", 0, base_args(corpus, single, **args, **{"--grad-accum": "2"}) + NO_DROPOUT)
    said = torchrun(corpus, base_args(corpus, ddp, **args) + NO_DROPOUT)
    assert "2 processes (DDP)" in said and said.count("held-out:") == 1   # rank 0 alone reports
    a = [x for x in records(single) if "loss" in x]
    b = [x for x in records(ddp) if "loss" in x]
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, 11))
    for x, y in zip(a, b):
        for k in ("loss", "mlm_loss", "nsp_loss", "mlm_acc"):
            assert y[k] == pytest.approx(x[k], abs=2e-4, rel=1e-4), (x["step"], k)
    assert a[-1]["loss"] < a[0]["loss"]
    wa, wb = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4

    # resume under DDP: drop the last checkpoint, continue from step 5, compare with the run above
    state = torch.load(ddp / "checkpoints" / "step_0000005" / "training_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["args"]["world_size"] == 2         # both ranks' RNG states
    import shutil
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000010")
    torchrun(corpus, base_args(corpus, resumed, **args, **{"--resume": True}) + NO_DROPOUT)
    assert_same_run(ddp, resumed)


def test_resume_on_another_number_of_processes_keeps_the_global_batch(corpus, tmp_path, capsys):
    """A run saved by 4 processes (batch 8, no accumulation) resumes in 1 process with --grad-accum 4, and
    says so; a --grad-accum that would change the global batch is refused, naming the one that keeps it.
    (tests/test_elastic.py resizes real torchrun jobs and compares the examples of every step.)"""
    out = tmp_path / "run"
    train.main(base_args(corpus, out, **{**COMMON, "--steps": "5"}))
    ckpt = out / "checkpoints" / "step_0000005"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    state["args"]["world_size"] = 4
    torch.save(state, ckpt / "training_state.pt")
    train.write_manifest(ckpt)
    with pytest.raises(train.UsageError, match=r"8 x 1 x 4 process\(es\) = 32 sequences.*--grad-accum 4"):
        train.main(base_args(corpus, out, **{**COMMON, "--steps": "10", "--grad-accum": "3", "--resume": True}))
    capsys.readouterr()
    train.main(base_args(corpus, out, **{**COMMON, "--steps": "6", "--resume": True}))
    assert "4 -> 1 process(es): --grad-accum 1 -> 4 keep 32 sequences a step" in capsys.readouterr().out
    assert torch.load(out / "checkpoints" / "step_0000006" / "training_state.pt",
                      weights_only=True)["args"]["grad_accum"] == 4
