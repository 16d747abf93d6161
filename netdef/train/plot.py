"""``netdef plot-log LOG OUT.png``: loss and score curves of a training log.

One panel for the losses (the train net's smoothed loss and the test nets'
loss outputs), one for the other test scores (accuracy ...), and a small one
for the learning rate. matplotlib is an optional dependency (``pip install
'netdef[plot]'``), imported only here.
"""
from __future__ import annotations

from netdef.errors import NetdefError
from netdef.train.logfile import read_log


def plot_log(log_path, out_path, title: str | None = None) -> list[str]:
    """Draw ``log_path``'s curves into ``out_path`` (.png, .svg, .pdf); returns
    the names of the curves drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NetdefError("plot-log needs matplotlib, which is not installed",
                          hint="pip install 'netdef[plot]' (or: pip install matplotlib)") from None
    log = read_log(log_path)
    losses = {k: v for k, v in log["test"].items() if k in log["test_losses"]}
    scores = {k: v for k, v in log["test"].items() if k not in log["test_losses"]}
    panels = 1 + bool(scores) + bool(log["lr"])
    ratios = [3] + ([3] if scores else []) + ([1] if log["lr"] else [])
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(8, 2 + 2 * panels),
                             gridspec_kw={"height_ratios": ratios}, squeeze=False)
    axes = [a[0] for a in axes]
    drawn = []

    def curve(ax, series, label):
        if series:
            xs, ys = zip(*series)
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
            drawn.append(label)

    curve(axes[0], log["train_loss"], "train loss")
    for (net, name), series in sorted(losses.items()):
        curve(axes[0], series, f"test #{net} {name}")
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="best")
    axes[0].grid(alpha=0.3)
    i = 1
    if scores:
        for (net, name), series in sorted(scores.items()):
            curve(axes[i], series, f"test #{net} {name}")
        axes[i].set_ylabel("score")
        axes[i].legend(loc="best")
        axes[i].grid(alpha=0.3)
        i += 1
    if log["lr"]:
        curve(axes[i], log["lr"], "lr")
        axes[i].set_ylabel("lr")
        axes[i].grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    fig.suptitle(title or str(log_path))
    fig.tight_layout()
    try:
        fig.savefig(out_path)
    except (OSError, ValueError) as exc:
        raise NetdefError(f"cannot write the plot: {exc}", where=str(out_path)) from None
    finally:
        plt.close(fig)
    return drawn
