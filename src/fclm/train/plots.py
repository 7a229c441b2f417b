"""Loss curves from a run's ``log.jsonl``."""
from __future__ import annotations

import json


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(log_paths: str | list[str], out_png: str, smooth: int = 10, labels: list[str] | None = None,
                chain: bool = False) -> str:
    """One panel per loss term, each run a line (moving average over ``smooth`` steps).

    ``chain``: runs follow each other (stage 2 after stage 1): each run's steps are offset by the
    previous runs' last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = [log_paths] if isinstance(log_paths, str) else list(log_paths)
    runs = [read_log(p) for p in paths]
    terms = [t for t in ("loss", "loss_ce", "loss_seg", "loss_dice", "loss_bce", "loss_self", "loss_latent")
             if any(t in r for run in runs for r in run)]
    offsets = [0] * len(runs)
    if chain:
        for k in range(1, len(runs)):
            offsets[k] = offsets[k - 1] + max((r["step"] for r in runs[k - 1]), default=0)
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for k, run in enumerate(runs):
            pts = [(r["step"] + offsets[k], r[term]) for r in run if term in r]
            if not pts:
                continue
            x, y = map(np.asarray, zip(*pts))
            if len(y) >= smooth > 1:
                y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
                x = x[smooth - 1:]
            ax.plot(x, y, label=(labels[k] if labels else None))
        ax.set_title(term)
        ax.set_xlabel("step")
        if labels:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
