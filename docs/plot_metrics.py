"""Plot held-out metrics of train.py runs: python docs/plot_metrics.py runs/bert runs/electra ... -o out.png

Needs matplotlib (not a dependency of the repo: `pip install matplotlib`). Left: held-out MLM
accuracy per run (for ELECTRA, its generator's); right: training loss; and, for an ELECTRA run,
the discriminator's held-out accuracy against the all-"original" baseline.
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run):
    recs = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in recs if "val_loss" in r], [r for r in recs if "loss" in r]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("-o", "--out", default="docs/default_runs.png")
    args = p.parse_args()
    electra = [r for r in args.runs if any("val_rtd_acc" in v for v in read(r)[0])]
    fig, axes = plt.subplots(1, 3 if electra else 2, figsize=(15 if electra else 10, 4), dpi=110)
    for run in args.runs:
        val, logs = read(run)
        name = Path(run).name
        axes[0].plot([r["step"] for r in val], [r["val_mlm_acc"] for r in val], marker="o", ms=3, label=name)
        axes[1].plot([r["step"] for r in logs], [r["loss"] for r in logs], lw=1, label=name)
    axes[0].set(title="held-out MLM accuracy", xlabel="step")
    axes[1].set(title="training loss (ELECTRA: gen + 50 x disc)", xlabel="step", yscale="log")
    for run in electra:
        val, _ = read(run)
        steps = [r["step"] for r in val]
        axes[2].plot(steps, [r["val_rtd_acc"] for r in val], marker="o", ms=3, label="discriminator accuracy")
        axes[2].plot(steps, [1 - r["val_replaced_frac"] for r in val], ls="--", label='all-"original" baseline')
        axes[2].plot(steps, [r["val_rtd_recall"] for r in val], marker=".", label="recall on replaced tokens")
        axes[2].plot(steps, [r["val_rtd_precision"] for r in val], marker=".", label="precision on replaced tokens")
        axes[2].set(title=f"ELECTRA replaced-token detection ({Path(run).name}, held-out)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
