"""cli.py: the thread count, the setup flags and mixed precision, the progress display, --help, the schedule and
the optimizer groups."""
import io
import os

import pytest
import torch

import cli
import train


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def fake_proc_stat(monkeypatch, tmp_path, running):
    """A /proc/stat whose procs_running says `running` tasks are runnable now (this process among them)."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  2255 34 2290 22625563 6290 127 456 0 0 0\nintr 114930548 113199788 3\nctxt 1990473\n"
                    f"btime 1062191376\nprocesses 2915\nprocs_running {running}\nprocs_blocked 0\n")
    monkeypatch.setattr(cli, "PROC_STAT", str(stat))


@pytest.mark.parametrize("cores, running, want", [(2, 1, 2), (2, 2, 1), (2, 3, 1), (2, 9, 1), (8, 3, 6),
                                                   (8, 1, 8), (1, 1, 1)])
def test_default_threads_are_the_cores_free_now(monkeypatch, tmp_path, restore_threads, cores, running, want):
    """The other jobs are counted as they run at this moment (procs_running less this process), not by the
    1-minute load average, which would still hold a job that has just ended."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0), raising=False)   # a job that just ended
    fake_proc_stat(monkeypatch, tmp_path, running)
    n, why = cli.set_threads()
    assert n == want == torch.get_num_threads()
    assert why == f"{cores} cores, {running - 1} other job(s) running; --threads N to choose"


@pytest.mark.parametrize("cores, load, want", [(2, 0.1, 2), (2, 0.9, 1), (8, 2.2, 6)])
def test_without_proc_the_load_average_stands_in(monkeypatch, tmp_path, restore_threads, cores, load, want):
    """macOS has no /proc/stat: the 1-minute load average is what there is."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0), raising=False)
    monkeypatch.setattr(cli, "PROC_STAT", str(tmp_path / "no-such-file"))
    n, why = cli.set_threads()
    assert n == want == torch.get_num_threads() and f"{cores} cores, load {load:.1f}" in why
    (tmp_path / "stat").write_text("cpu  1 2 3 4\n")                       # a /proc/stat without the line
    monkeypatch.setattr(cli, "PROC_STAT", str(tmp_path / "stat"))
    assert cli.other_jobs() == (load, f"load {load:.1f}")


def test_threads_flag_and_environment_win(monkeypatch, tmp_path, restore_threads):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0), raising=False)
    fake_proc_stat(monkeypatch, tmp_path, 9)
    assert cli.set_threads(2)[0] == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.set_threads() == (1, "OMP_NUM_THREADS")
    with pytest.raises(cli.UsageError, match="--threads 0: give at least 1"):
        cli.set_threads(0)


@pytest.mark.parametrize("tool", ["train", "finetune", "bench"])
def test_the_tools_take_the_same_setup_flags(tool):
    """--device, --precision, --threads and --seed come from cli.add_setup_args in every training tool."""
    module = __import__(tool)
    argv = (["--model", "bert"] if tool != "finetune" else ["--task", "sst2", "--init-from", "x"])
    args = module.parse_args(argv + ["--device", "cpu", "--precision", "bf16", "--threads", "3", "--seed", "7"])
    assert (args.device, args.precision, args.threads, args.seed) == ("cpu", "bf16", 3, 7)
    defaults = module.parse_args(argv)
    assert (defaults.device, defaults.precision, defaults.threads, defaults.seed) == (None, None, None, 0)
    with pytest.raises(SystemExit):
        module.parse_args(argv + ["--precision", "fp8"])


def test_mixed_precision_sets_up_autocast_and_the_scaler():
    fp32 = cli.mixed_precision(None, torch.device("cpu"))                # no GPU: fp32, nothing to enter
    assert fp32.name == "fp32" and fp32.scaler is None and not isinstance(fp32.autocast, torch.autocast)
    bf16 = cli.mixed_precision("bf16", "cpu")
    assert isinstance(bf16.autocast, torch.autocast) and bf16.scaler is None
    with bf16.autocast:                                                  # reusable: entered twice
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with bf16.autocast:
        assert torch.is_autocast_enabled("cpu")
    fp16 = cli.mixed_precision("fp16", "cpu")
    assert isinstance(fp16.scaler, torch.amp.GradScaler)


def test_progress_in_a_file_is_a_few_plain_lines(capsys):
    bar = cli.progress(1500, desc="pretraining")                 # pytest's stderr is not a terminal
    assert isinstance(bar, cli._PlainProgress)
    for step in range(1500):
        bar.update(1)
        if step == 700:
            bar.set_postfix(loss="3.210")
            bar.write("step 700: val_loss 3.3")
    bar.close()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\r" not in out and 20 <= len(lines) <= 23          # every 5%, the end, the one written line
    assert lines[-1].startswith("pretraining: 1500/1500 (100%)") and "loss 3.210" in lines[-1]
    assert "step 700: val_loss 3.3" in lines


def test_progress_in_a_terminal_is_tqdm(monkeypatch):
    monkeypatch.setattr("sys.stderr", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    bar = cli.progress(10, desc="x")
    assert type(bar).__name__ == "tqdm"
    bar.close()


def test_train_help_shows_the_defaults_and_the_recipes(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "AdamW decay (not on biases and norms) (default: 0.01)" in text
    assert "(default: 500)" in text and "(default: None)" not in text and "(default: False)" not in text
    assert "electra --preset tiny --steps 1500 --batch-size 32 --seq-len 128 --lr 0.0005 --warmup 150" in text


def test_lr_factor_warms_up_then_decays():
    assert [round(cli.lr_factor(s, 4, 12), 3) for s in (0, 1, 3, 4, 8, 12, 20)] == [0.25, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert cli.lr_factor(8, 4, 12, "cosine") == pytest.approx(0.5)


def test_optimizer_groups_put_no_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = cli.make_optimizer(model, 1e-3, 0.01)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay == {id(model[0].weight): 0.01, id(model[0].bias): 0.0, id(model[1].weight): 0.0,
                     id(model[1].bias): 0.0}


def test_parse_overrides_reads_json_values():
    assert cli.parse_overrides(["a=1", "b=true", "c=gelu", "d=0.5"]) == {"a": 1, "b": True, "c": "gelu", "d": 0.5}
    with pytest.raises(cli.UsageError, match="not KEY=VALUE"):
        cli.parse_overrides(["hidden_size"])


def test_plain_warnings_are_one_line_naming_the_tool(capsys):
    """What a model file warns (e.g. a head initialised fresh) reaches a tool's user as `tool: warning: ...`,
    one line on stderr, not Python's file:line and source line."""
    import warnings
    with warnings.catch_warnings():                           # restores Python's own display afterwards
        warnings.simplefilter("always")
        cli.plain_warnings("train.py")
        warnings.warn("BertForPreTraining: initialised fresh (not in run/): ['cls.seq_relationship']")
    err = capsys.readouterr().err
    assert err == "train.py: warning: BertForPreTraining: initialised fresh (not in run/): ['cls.seq_relationship']\n"
