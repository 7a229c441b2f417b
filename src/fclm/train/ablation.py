"""`fclm quickstart --ablate`: FCLM's two consistency losses tested in miniature, with intervals.

Trains the quickstart recipe for each of four variants — with and without L_self (stage 1) and with
and without L_latent (both stages: the quickstart uses it in stage 1 too) — and each of several seeds
(the seed sets the model's initialisation and the data order), evaluates RES, DL-RES, ROC and DLC on
the same held-out test scenes, and reports mean ± standard deviation over the seeds. Runs go
``jobs`` at a time, each a separate process with one thread (on a 2-core machine two one-thread runs
finish sooner than one two-thread run after another). A finished run leaves ``row.json``; running
the command again skips it, so a killed ablation resumes. Writes ``ablation.json``, ``ablation.md``
and ``ablation.png``. The figures are reported as measured, whichever way they fall.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

ABLATION_TASKS = ("res", "dlres", "roc", "dlc")
VARIANTS = ((True, True), (True, False), (False, True), (False, False))  # (L_self, L_latent)
METRICS = (("res", "gIoU"), ("res", "cIoU"), ("dlres", "gIoU"), ("dlres", "cIoU"), ("roc", "accuracy"),
           ("dlc", "attribute_recall"), ("dlc", "hallucination_rate"))


def variant_name(use_self: bool, use_latent: bool) -> str:
    return f"self{int(use_self)}-latent{int(use_latent)}"


def run_variant(out: str, use_self: bool, use_latent: bool, seed: int, stage1_steps: int | None = None,
                stage2_steps: int | None = None, test_scenes: int = 60, threads: int | None = None,
                progress: bool = False, tasks=ABLATION_TASKS) -> dict:
    """Train and evaluate one (variant, seed); returns its row (also written to ``out/row.json``)."""
    row_path = os.path.join(out, "row.json")
    if os.path.exists(row_path):
        with open(row_path) as f:
            return json.load(f)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .quickstart import evaluate_all, train_stages

    t0 = time.time()
    flags = [f"model.overrides.latent_weight={1.0 if use_latent else 0.0}"]
    model_dir = train_stages(out, stage1_steps, stage2_steps, seed, progress,
                             extra1=[f"model.overrides.self_recon_weight={1.0 if use_self else 0.0}", *flags],
                             extra2=flags)
    metrics = evaluate_all(model_dir, out, test_scenes, tasks, progress=progress)
    row = {"L_self": use_self, "L_latent": use_latent, "seed": seed, "wall_s": round(time.time() - t0, 1),
           **{f"{t}/{k}": v for t, m in metrics.items() for k, v in m["metrics"].items()}}
    for d in ("stage1", "stage2", "model"):  # keep the logs and the row, not three copies of the weights
        for sub in ("checkpoints", "final") if d != "model" else ("",):
            shutil.rmtree(os.path.join(out, d, sub), ignore_errors=True)
    tmp = row_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(row, f, indent=2)
    os.replace(tmp, row_path)
    return row


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def aggregate(rows: list[dict]) -> list[dict]:
    """Per variant: mean and sample standard deviation (n − 1) of every metric over its seeds."""
    out = []
    for use_self, use_latent in VARIANTS:
        mine = [r for r in rows if r["L_self"] == use_self and r["L_latent"] == use_latent]
        if not mine:
            continue
        agg = {"L_self": use_self, "L_latent": use_latent, "seeds": sorted(r["seed"] for r in mine)}
        for t, k in METRICS:
            vals = [r[f"{t}/{k}"] for r in mine if f"{t}/{k}" in r]
            if vals:
                agg[f"{t}/{k}"] = _mean_std(vals)
        out.append(agg)
    return out


def markdown_table(agg: list[dict]) -> str:
    cols = [f"{t}/{k}" for t, k in METRICS if any(f"{t}/{k}" in a for a in agg)]

    def cell(v):
        m, s = v
        return f"{m:.1f}" if math.isnan(s) else f"{m:.1f} ± {s:.1f}"

    lines = ["| L_self | L_latent | seeds | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for a in agg:
        lines.append(f"| {'✓' if a['L_self'] else '–'} | {'✓' if a['L_latent'] else '–'} | {len(a['seeds'])} | "
                     + " | ".join(cell(a[c]) if c in a else "–" for c in cols) + " |")
    return "\n".join(lines)


def plot_ablation(rows: list[dict], agg: list[dict], out_png: str) -> str:
    """One panel per metric: each variant's mean with a ±1 std bar and its seeds as red dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(t, k) for t, k in METRICS if any(f"{t}/{k}" in a for a in agg)]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.2), squeeze=False)
    labels = [f"{'+' if a['L_self'] else '−'}self\n{'+' if a['L_latent'] else '−'}latent" for a in agg]
    for ax, (t, k) in zip(axes[0], cols):
        key = f"{t}/{k}"
        means = [a[key][0] if key in a else 0.0 for a in agg]
        errs = [0.0 if key not in a or math.isnan(a[key][1]) else a[key][1] for a in agg]
        ax.bar(range(len(agg)), means, yerr=errs, capsize=3, color=["C0", "C1", "C2", "C7"][: len(agg)])
        for i, a in enumerate(agg):
            pts = [r[key] for r in rows if r["L_self"] == a["L_self"] and r["L_latent"] == a["L_latent"] and key in r]
            ax.plot([i + 0.22] * len(pts), pts, "o", color="crimson", ms=3)  # each seed, beside its bar
        ax.set_xticks(range(len(agg)), labels, fontsize=7)
        ax.set_title(f"{t} {k}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _job(kw: dict) -> dict:
    return run_variant(**kw)


def run_ablation(out: str, stage1_steps: int | None = None, stage2_steps: int | None = None,
                 test_scenes: int = 60, seeds=(0, 1, 2), jobs: int = 2, progress: bool = True,
                 tasks=ABLATION_TASKS) -> str:
    """Every variant × seed (``jobs`` one-thread processes at a time); returns the Markdown table."""
    from tqdm.auto import tqdm

    seeds = list(seeds)
    if not seeds:
        raise ValueError("the ablation needs at least one seed")
    os.makedirs(out, exist_ok=True)
    work = [dict(out=os.path.join(out, f"{variant_name(s, l)}-seed{seed}"), use_self=s, use_latent=l, seed=seed,
                 stage1_steps=stage1_steps, stage2_steps=stage2_steps, test_scenes=test_scenes, threads=1,
                 tasks=tuple(tasks))
            for seed in seeds for s, l in VARIANTS]
    t0 = time.time()
    bar = tqdm(total=len(work), desc="ablation runs", disable=not progress)
    rows = []
    if jobs <= 1:
        for kw in work:
            rows.append(_job(kw))
            bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a fresh interpreter per worker (no forked torch thread pools)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            for fut in as_completed([ex.submit(_job, kw) for kw in work]):
                rows.append(fut.result())
                bar.update(1)
    bar.close()
    rows.sort(key=lambda r: (VARIANTS.index((r["L_self"], r["L_latent"])), r["seed"]))
    agg = aggregate(rows)
    table = markdown_table(agg)
    wall = time.time() - t0
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump({"rows": rows, "summary": [{k: list(v) if isinstance(v, tuple) else v for k, v in a.items()}
                                             for a in agg],
                   "stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "test_scenes": test_scenes,
                   "seeds": seeds, "jobs": jobs, "wall_s": round(wall, 1)}, f, indent=2)
    plot_ablation(rows, agg, os.path.join(out, "ablation.png"))
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write("# Consistency-loss ablation (quickstart scale)\n\n"
                f"Mean ± sample standard deviation over seeds {seeds}; {test_scenes} held-out test scenes; "
                f"stage-1 steps: {stage1_steps or 'default'}; wall time {wall:.0f} s with {jobs} run(s) at a time."
                "\n\n" + table + "\n\n![ablation](ablation.png)\n")
    return table
