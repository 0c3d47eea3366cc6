"""train.py on a shared cluster: one command for the first launch and every restart (--resume auto),
checkpoints that verify themselves (manifest.json), a worker killed under torchrun --max-restarts,
a run resumed on another number of processes (the global batch and the data order kept), and two
"nodes" on one machine (c10d rendezvous on loopback). Everything on the CPU with gloo; every
comparison is bit for bit unless it says otherwise.

The torchrun jobs run a small driver that can SIGKILL one worker of the first attempt at a chosen
step, and can record which examples every micro-batch holds; the jobs they are compared with go
through the same driver."""
import argparse
import hashlib
import json
import socket
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import train
from test_resilience import NO_DROPOUT, assert_same_run, corpus, env, launch, shared  # noqa: F401 (fixtures)
from test_train import base_args, killed_after_checkpoint, records

DRIVER = r'''
import json, os, signal, sys
sys.path.insert(0, os.environ["REPO"])
import torch, data, train
rank, first_try = int(os.environ.get("RANK", "0")), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
kill_rank, kill_at = int(os.environ.get("KILL_RANK", "-1")), int(os.environ.get("KILL_AT", "0"))
term_at = int(os.environ.get("TERM_AT", "0"))
real_step, calls = torch.optim.AdamW.step, [0]
def step(self, *a, **k):                        # before the n-th optimizer update is applied:
    calls[0] += 1
    if calls[0] == kill_at and rank == kill_rank and first_try:
        os.kill(os.getpid(), signal.SIGKILL)    # one worker dies
    if calls[0] == term_at:
        os.kill(os.getpid(), signal.SIGTERM)    # every process is asked to stop (a preemption)
    return real_step(self, *a, **k)
torch.optim.AdamW.step = step
if os.environ.get("RECORD"):                    # the example ids of every batch the training loop takes, in order
    real_iterate, out = data.PretrainingBatches.iterate, open(os.path.join(os.environ["RECORD"], f"rank{rank}.jsonl"), "a")
    def iterate(self, start_step=0, prefetch=4):
        stream = real_iterate(self, start_step, prefetch)
        try:
            for i, batch in enumerate(stream):
                out.write(json.dumps({"i": i, "ids": self.example_ids(start_step + i).tolist()}) + "\n")
                out.flush()
                yield batch
        finally:
            stream.close()
    data.PretrainingBatches.iterate = iterate
try:
    train.main(sys.argv[1:])
except (train.UsageError, data.DataError) as e:
    sys.exit(f"train.py: error: {e}")
except train.TrainingStopped as e:
    print(f"train.py: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
'''

COMMON = {"--steps": "8", "--save-every": "4", "--eval-every": "4", "--log-every": "1", "--show": "0",
          "--threads": "1"}


def driver(tmp):
    path = Path(tmp) / "driver.py"
    path.write_text(DRIVER)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(corpus, tmp, argv, nproc=1, extra_env=None, torchrun_args=(), ok=True):
    """train.py through the driver: a plain process (nproc=0) or torchrun --standalone on loopback.
    ok=False: the job must fail (e.g. stopped by TERM_AT)."""
    e = {**env(corpus.parent / "cache"), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(extra_env or {})}
    script = [str(driver(tmp)), *argv, "--device", "cpu"]
    cmd = ([sys.executable, *script] if nproc == 0 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *torchrun_args, *script])
    [(rc, stdout, stderr)] = launch([cmd], e)
    assert (rc == 0) == ok, (stdout[-2000:], stderr[-4000:])
    return argparse.Namespace(stdout=stdout, stderr=stderr)


@pytest.fixture(scope="module")
def straight(shared, tmp_path_factory):
    """The uninterrupted 2-process job (and the examples it read) that the others are compared with."""
    tmp = tmp_path_factory.mktemp("straight")
    out, rec = tmp / "run", tmp / "examples"
    rec.mkdir()
    run_job(shared[0], tmp, base_args(shared[0], out, **COMMON) + NO_DROPOUT, nproc=2, extra_env={"RECORD": str(rec)})
    return out, rec


def examples_per_step(record_dir, grad_accum, after_step, last_step):
    """{optimizer step: sorted example ids of all its micro-batches on all processes} from the records of a
    job that started at `after_step`: the i-th batch a process took belongs to step after_step + i // accum + 1
    (the records of a step the job did not finish, e.g. one cut by a stop, are left out)."""
    per_step = defaultdict(list)
    for f in Path(record_dir).glob("rank*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            s = after_step + r["i"] // grad_accum + 1
            if s <= last_step:
                per_step[s] += r["ids"]
    return {s: sorted(v) for s, v in sorted(per_step.items())}


# ----------------------------------------------------------------------------- one command: --resume auto

def test_resume_auto_starts_fresh_then_continues_exactly(corpus, tmp_path, capsys):
    """The same command, --resume auto, for the first launch (nothing in OUT: a fresh start, said so)
    and for the relaunch after a stop (continues from the checkpoint): the result is the run never stopped."""
    common = {**COMMON, "--threads": "2"}
    train.main(base_args(corpus, tmp_path / "straight", **common))
    out = tmp_path / "auto"
    with pytest.raises(KeyboardInterrupt), killed_after_checkpoint(4):
        train.main(base_args(corpus, out, **common, **{"--resume": "auto"}))
    assert "--resume auto: no checkpoint in" in capsys.readouterr().out
    train.main(base_args(corpus, out, **common, **{"--resume": "auto"}))
    assert f"resuming {out / 'checkpoints' / 'step_0000004'} at step 4" in capsys.readouterr().out
    assert_same_run(tmp_path / "straight", out)
    with pytest.raises(train.UsageError, match="no checkpoint.*--resume auto"):     # plain --resume insists
        train.main(base_args(corpus, tmp_path / "empty", **common, **{"--resume": True}))


# ----------------------------------------------------------------------------- checkpoints verify themselves

@pytest.fixture
def two_checkpoints(corpus, tmp_path):
    """A run with checkpoints at steps 4 and 8 (keep 3), and a copy of it that is never touched."""
    out = tmp_path / "run"
    train.main(base_args(corpus, out, **{**COMMON, "--threads": "2", "--keep": "3"}))
    return out


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_manifest_lists_every_file_with_its_size_and_sha256(corpus, tmp_path):
    """ELECTRA's checkpoint has a generator/ folder: the manifest covers it too, and is the last file written."""
    out = tmp_path / "electra"
    train.main(base_args(corpus, out, model="electra", **{**COMMON, "--steps": "4", "--threads": "2"}))
    ckpt = out / "checkpoints" / "step_0000004"
    files = json.loads((ckpt / train.MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(ckpt).as_posix(): p for p in ckpt.rglob("*") if p.is_file() and p.name != train.MANIFEST}
    assert set(files) == set(on_disk) and any(n.startswith("generator/") for n in files)
    for name, p in on_disk.items():
        assert files[name] == {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        assert p.stat().st_mtime_ns <= (ckpt / train.MANIFEST).stat().st_mtime_ns
    assert train.check_manifest(ckpt) is None


def _flip_a_byte(file):
    b = bytearray(file.read_bytes())
    b[len(b) // 2] ^= 0x40
    file.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, why", [
    (lambda c: _flip_a_byte(c / "model.safetensors"), "model.safetensors does not match its SHA-256"),
    (lambda c: (c / "training_state.pt").write_bytes((c / "training_state.pt").read_bytes()[:1000]),
     "training_state.pt has 1000 bytes, the manifest says"),
    (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda c: (c / train.MANIFEST).unlink(), "its manifest.json is missing"),
    (lambda c: (c / train.MANIFEST).write_text('{"files": {"config.json": 3}}'), "manifest.json is unreadable"),
])
def test_a_bad_newest_checkpoint_is_skipped_and_kept(corpus, tmp_path, two_checkpoints, capsys, damage, why):
    """A damaged newest checkpoint is skipped with one line naming it and why; the resume continues from the
    previous one, exactly (the result equals the run never damaged), and removes nothing: the damaged one is
    moved aside (replaced-step_...) when the run writes that step again, byte for byte as it was."""
    out, bad = two_checkpoints, two_checkpoints / "checkpoints" / "step_0000008"
    straight = tmp_path / "straight"
    import shutil
    shutil.copytree(out, straight)
    damage(bad)
    before = snapshot(bad)
    capsys.readouterr()
    train.main(base_args(corpus, out, **{**COMMON, "--threads": "2", "--keep": "3"}, **{"--resume": True}))
    said = capsys.readouterr().out
    skipped = [l for l in said.splitlines() if l.startswith("--resume: skipping")]
    assert len(skipped) == 1 and "step_0000008" in skipped[0] and why in skipped[0], said
    assert f"resuming {out / 'checkpoints' / 'step_0000004'} at step 4" in said
    assert_same_run(straight, out, after_step=4)
    aside = list((out / "checkpoints").glob("replaced-step_0000008-*"))
    assert len(aside) == 1 and snapshot(aside[0]) == before
    assert train.check_manifest(out / "checkpoints" / "step_0000008") is None


def test_no_good_checkpoint_is_an_error_that_names_each_and_removes_nothing(corpus, two_checkpoints):
    ckpts = two_checkpoints / "checkpoints"
    _flip_a_byte(ckpts / "step_0000008" / "model.safetensors")
    (ckpts / "step_0000004" / "config.json").write_text("{}")
    before = snapshot(two_checkpoints)
    with pytest.raises(train.UsageError, match=r"no good checkpoint.*step_0000008 \(model.safetensors does not "
                                               r"match.*step_0000004 \(config.json has 2 bytes.*Nothing was removed"):
        train.main(base_args(corpus, two_checkpoints, **{**COMMON, "--resume": "auto"}))   # auto: no fresh start
    assert snapshot(two_checkpoints) == before


def test_a_checkpoint_from_before_manifests_resumes_unverified(corpus, two_checkpoints, capsys):
    ckpt = two_checkpoints / "checkpoints" / "step_0000008"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    del state["manifest"]
    torch.save(state, ckpt / "training_state.pt")
    (ckpt / train.MANIFEST).unlink()
    capsys.readouterr()
    train.main(base_args(corpus, two_checkpoints, **{**COMMON, "--steps": "10", "--resume": True}))
    said = capsys.readouterr().out
    assert "step_0000008: no manifest.json (saved before checkpoints carried one): resuming it unverified" in said
    assert "resuming" in said and "at step 8" in said


def test_keep_never_removes_the_last_good_checkpoint(corpus, two_checkpoints, capsys):
    """--keep 1 with an unverified checkpoint that sorts after every other (a copy cut short, say): the
    checkpoint just written is the last good one and stays; a later resume skips the bad one and uses it."""
    ckpts = two_checkpoints / "checkpoints"
    bogus = ckpts / "step_0000099"
    bogus.mkdir()
    (bogus / "model.safetensors").write_bytes(b"cut short")
    train.main(base_args(corpus, two_checkpoints, **{**COMMON, "--steps": "12", "--keep": "1", "--resume": True}))
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000012", "step_0000099"]
    assert train.check_manifest(ckpts / "step_0000012") is None
    capsys.readouterr()
    train.main(base_args(corpus, two_checkpoints, **{**COMMON, "--steps": "14", "--keep": "1", "--resume": True}))
    assert f"resuming {ckpts / 'step_0000012'} at step 12" in capsys.readouterr().out


# ----------------------------------------------------------------------------- another number of processes

def resume_args(**given):
    """The Namespace fit_world sees: the flags given on the command line and their values."""
    ns = argparse.Namespace(batch_size=given.pop("batch_size", 8), grad_accum=given.pop("grad_accum", 1))
    ns.given = set(given.pop("given", ()))
    return ns


@pytest.mark.parametrize("saved, world, given, expect", [
    ((8, 1, 2), 1, {}, (8, 2, "2 -> 1 process(es): --grad-accum 1 -> 2 keep 16 sequences a step, the same examples "
                              "and masks")),
    ((8, 2, 1), 2, {}, (8, 1, "1 -> 2 process(es): --grad-accum 2 -> 1 keep 16")),
    ((8, 3, 4), 4, {}, (8, 3, "")),
    ((8, 1, 4), 2, {"batch_size": 4, "given": ["batch_size"]}, (4, 4, "4 -> 2 process(es): --grad-accum 1 -> 4, "
                                                                      "--batch-size 8 -> 4 keep 32 sequences a step, the "
                                                                      "same examples in every step, their masks")),
])
def test_fit_world_keeps_the_global_batch(saved, world, given, expect):
    b, a, w = saved
    got = train.fit_world(resume_args(**given), {"batch_size": b, "grad_accum": a, "world_size": w}, world)
    assert got[:2] == expect[:2] and got[2].startswith(expect[2]) and (expect[2] or not got[2])
    assert got[0] * got[1] * world == b * a * w


@pytest.mark.parametrize("saved, world, given, names", [
    ((8, 1, 4), 1, {"grad_accum": 3, "given": ["grad_accum"]}, "8 x 1 x 4 process.*= 32.*8 x 3 x 1.*--grad-accum 4"),
    ((8, 1, 2), 3, {}, r"= 16 sequences.*On 3 process\(es\).*no batch size; with --batch-size 8, use 1, 2 processes"),
    ((6, 1, 4), 3, {}, r"= 24 sequences.*--batch-size 4 --grad-accum 2 or --batch-size 2 --grad-accum 4"),
])
def test_a_global_batch_that_cannot_be_kept_is_an_error_naming_what_would(saved, world, given, names):
    b, a, w = saved
    with pytest.raises(train.UsageError, match=names):
        train.fit_world(resume_args(**given), {"batch_size": b, "grad_accum": a, "world_size": w}, world)


def test_resize_keeps_the_examples_of_every_step_and_the_losses(corpus, straight, tmp_path):
    """2 processes for 4 steps, then 1 process (--grad-accum 1 -> 2); and 1 process with --grad-accum 2 for
    4 steps, then 2 processes (-> 1): every optimizer step sees the examples (and masks) of the uninterrupted
    2-process job, the losses agree within float rounding (the gradient sums differ in order), and the
    schedule and the optimizer's state carry over."""
    ref_out, ref_rec = straight
    ref = examples_per_step(ref_rec, 1, 0, 8)
    assert len(ref) == 8 and all(len(v) == 16 for v in ref.values())
    ref_logs = {r["step"]: r for r in records(ref_out) if "loss" in r}
    for name, first, then in (("shrink", (2, {}), (0, {})), ("grow", (0, {"--grad-accum": "2"}), (2, {}))):
        out = tmp_path / name
        for phase, (nproc, flags) in enumerate((first, then)):
            rec = tmp_path / f"{name}-{phase}"
            rec.mkdir()
            stop = {"TERM_AT": "3"} if phase == 0 else {}          # SIGTERM in step 3: it stops after step 4
            r = run_job(corpus, tmp_path, base_args(corpus, out, **COMMON, **flags, **{"--resume": "auto"})
                        + NO_DROPOUT, nproc=nproc, extra_env={"RECORD": str(rec), **stop}, ok=phase == 1)
            accum = (1 if nproc == 2 else 2)
            if phase == 1:
                assert f"{2 if nproc == 0 else 1} -> {nproc or 1} process(es): --grad-accum {3 - accum} -> {accum} " \
                       "keep 16 sequences a step, the same examples and masks in every step" in r.stdout, r.stdout
            got = examples_per_step(rec, accum, 4 * phase, 4 + 4 * phase)
            assert got == {s: ref[s] for s in got} and len(got) == 4, (name, phase)
        logs = {r["step"]: r for r in records(out) if "loss" in r}
        assert sorted(logs) == sorted(ref_logs)
        for s in logs:
            for k in ("loss", "mlm_loss", "nsp_loss", "lr"):
                assert logs[s][k] == pytest.approx(ref_logs[s][k], abs=2e-4, rel=1e-4), (name, s, k)
        state = torch.load(out / "checkpoints" / "step_0000008" / "training_state.pt", weights_only=True)
        assert state["args"]["world_size"] == (then[0] or 1) and state["scheduler"]["last_epoch"] == 8


# ----------------------------------------------------------------------------- torchrun restarts a killed worker

def test_a_killed_worker_costs_only_the_steps_since_the_last_checkpoint(corpus, straight, tmp_path):
    """torchrun --max-restarts 2 --standalone --nproc_per_node 2, the same command (--resume auto) for every
    attempt: rank 1 gets SIGKILL before its 6th update, torchrun restarts the group, the job continues from
    the step-4 checkpoint and ends with the weights and metrics of the job never killed, bit for bit."""
    out = tmp_path / "killed"
    r = run_job(corpus, tmp_path, base_args(corpus, out, **COMMON, **{"--resume": "auto"}) + NO_DROPOUT, nproc=2,
                torchrun_args=("--max-restarts", "2", "--monitor-interval", "0.2"),
                extra_env={"KILL_RANK": "1", "KILL_AT": "6"})
    assert r.stdout.count("--resume auto: no checkpoint") == 1, r.stdout
    assert f"resuming {out / 'checkpoints' / 'step_0000004'} at step 4" in r.stdout, r.stdout
    assert "SIGKILL" in r.stderr or "Signals.SIGKILL" in r.stderr or "exitcode: -9" in r.stderr, r.stderr[-3000:]
    assert_same_run(straight[0], out)


# ----------------------------------------------------------------------------- two nodes on one machine

def test_two_nodes_on_loopback_train_checkpoint_once_and_resume(corpus, straight, tmp_path):
    """torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT, started
    twice (two "nodes"), as the README's multi-node command: rank 0 alone writes each checkpoint; the same
    two commands with --resume auto continue; the result equals the one-node 2-process job, bit for bit."""
    out = tmp_path / "nodes"
    e = {**env(corpus.parent / "cache"), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}

    def both_nodes(stop):
        port = free_port()
        argv = [str(driver(tmp_path)), *base_args(corpus, out, **{**COMMON, "--resume": "auto"}), *NO_DROPOUT,
                "--device", "cpu"]
        node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes",
                "--local-addr", "127.0.0.1", *argv]
        done = launch([node, node], {**e, **stop})
        assert [rc == 0 for rc, _, _ in done] == [not stop] * 2, [err[-3000:] for _, _, err in done]
        return "".join(o for _, o, _ in done)

    said = both_nodes({"TERM_AT": "3"})                   # SIGTERM in step 3: it stops after step 4
    assert said.count("2 processes (DDP)") == 1 and said.count("--resume auto: no checkpoint") == 1, said
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000004"]
    assert len(torch.load(ckpts / "step_0000004" / "training_state.pt", weights_only=True)["rng"]) == 2
    said = both_nodes({})
    assert said.count(f"resuming {ckpts / 'step_0000004'} at step 4") == 1, said
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000004", "step_0000008"]
    assert_same_run(straight[0], out)
