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


def variant_overrides(use_self: bool, use_latent: bool) -> tuple[list[str], list[str]]:
    """Stage-1 and stage-2 config overrides of a variant: a term it keeps keeps the recipe's weight
    (the full variant *is* the default quickstart); a term it drops gets weight 0."""
    latent = [] if use_latent else ["model.overrides.latent_weight=0.0"]
    return ([] if use_self else ["model.overrides.self_recon_weight=0.0"]) + latent, list(latent)


def run_variant(out: str, use_self: bool, use_latent: bool, seed: int, stage1_steps: int | None = None,
                stage2_steps: int | None = None, test_scenes: int = 60, threads: int | None = None,
                progress: bool = False, tasks=ABLATION_TASKS) -> dict:
    """Train and evaluate one (variant, seed); returns its row (also written to ``out/row.json``,
    which :func:`run_ablation` reads instead of training the run again)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .quickstart import evaluate_all, scene_size, train_stages

    t0 = time.time()
    extra1, extra2 = variant_overrides(use_self, use_latent)
    model_dir = train_stages(out, stage1_steps, stage2_steps, seed, progress, extra1=extra1, extra2=extra2)
    metrics = evaluate_all(model_dir, out, test_scenes, tasks, progress=progress, image_size=scene_size(extra1))
    row = {"L_self": use_self, "L_latent": use_latent, "seed": seed, "wall_s": round(time.time() - t0, 1),
           **{f"{t}/{k}": v for t, m in metrics.items() for k, v in m["metrics"].items()}}
    for d in ("stage1", "stage2", "model"):  # keep the logs and the row, not three copies of the weights
        for sub in ("checkpoints", "final") if d != "model" else ("",):
            shutil.rmtree(os.path.join(out, d, sub), ignore_errors=True)
    _write_row(os.path.join(out, "row.json"), row)
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


_RUN_SPECIFIC = ("output_dir", "source_file", "strategy", "num_processes")


def reused_row(run_dir: str, stage1_steps: int | None = None, stage2_steps: int | None = None,
               test_scenes: int = 60, tasks=ABLATION_TASKS) -> dict:
    """A finished ``fclm quickstart --seed N`` run as the full variant's row for seed N.

    The full variant *is* the default quickstart, so a run a user already has need not be trained
    again. Refused (``ValueError`` naming the file and field) unless both stage configs equal the
    packaged recipe's with that seed (and the same step counts) and the run was evaluated on the same
    number of test scenes with every ablation task. The row records where it came from (``source``).
    """
    from .config import load_train_config, to_dict
    from .quickstart import packaged_config, stage_overrides

    def read(path):
        if not os.path.exists(path):
            raise ValueError(f"{path}: missing (not a finished `fclm quickstart` run)")
        with open(path) as f:
            return json.load(f)

    metrics_path = os.path.join(run_dir, "metrics.json")
    result = read(metrics_path)
    seed = read(os.path.join(run_dir, "stage1", "train_config.json")).get("seed")
    if not isinstance(seed, int):
        raise ValueError(f"{os.path.join(run_dir, 'stage1', 'train_config.json')}: no integer seed")
    for stage, steps in (("stage1", stage1_steps), ("stage2", stage2_steps)):
        path = os.path.join(run_dir, stage, "train_config.json")
        got = read(path)
        want = json.loads(json.dumps(to_dict(load_train_config(packaged_config(f"quickstart-{stage}.yaml"),
                                                               stage_overrides(stage, seed, steps))), default=str))
        for d in (got, want):
            for k in _RUN_SPECIFIC:
                d.pop(k, None)
            d.get("model", {}).pop("path", None)  # stage 2 starts from the run's own stage-1 model
        bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        if bad:
            raise ValueError(f"{path}: {bad[0]} differs from the packaged quickstart recipe "
                             f"({got.get(bad[0])!r} vs {want.get(bad[0])!r}): not the full variant")
    if result.get("test_scenes") != test_scenes:
        raise ValueError(f"{metrics_path}: test_scenes is {result.get('test_scenes')}, the ablation uses {test_scenes}")
    missing = [t for t in tasks if t not in result.get("metrics", {})]
    if missing:
        raise ValueError(f"{metrics_path}: no {missing[0]} metrics")
    return {"L_self": True, "L_latent": True, "seed": seed, "wall_s": round(result["timings_s"]["total"], 1),
            "source": os.path.abspath(run_dir),
            **{f"{t}/{k}": v for t in tasks for k, v in result["metrics"][t]["metrics"].items()}}


def _write_row(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(row, f, indent=2)
    os.replace(tmp, path)


def _job(kw: dict) -> dict:
    return run_variant(**kw)


def run_ablation(out: str, stage1_steps: int | None = None, stage2_steps: int | None = None,
                 test_scenes: int = 60, seeds=(0, 1, 2), jobs: int = 2, progress: bool = True,
                 tasks=ABLATION_TASKS, reuse=()) -> str:
    """Every variant × seed (``jobs`` one-thread processes at a time); returns the Markdown table.
    ``reuse``: finished ``fclm quickstart --seed N`` folders that stand for the full variant of their
    seed (see :func:`reused_row`); checked before anything trains."""
    from tqdm.auto import tqdm

    seeds = list(seeds)
    if not seeds:
        raise ValueError("the ablation needs at least one seed")
    reused = [reused_row(d, stage1_steps, stage2_steps, test_scenes, tasks) for d in reuse]
    for r in reused:
        if r["seed"] not in seeds:
            raise ValueError(f"{r['source']}: seed {r['seed']} is not among the ablation's seeds {seeds}")
    if len({r["seed"] for r in reused}) != len(reused):
        raise ValueError("two reused runs have the same seed")
    os.makedirs(out, exist_ok=True)
    for r in reused:
        _write_row(os.path.join(out, f"{variant_name(True, True)}-seed{r['seed']}", "row.json"), r)
    work = [dict(out=os.path.join(out, f"{variant_name(s, l)}-seed{seed}"), use_self=s, use_latent=l, seed=seed,
                 stage1_steps=stage1_steps, stage2_steps=stage2_steps, test_scenes=test_scenes, threads=1,
                 tasks=tuple(tasks))
            for seed in seeds for s, l in VARIANTS]
    rows = []
    for kw in list(work):  # finished (or reused) runs: their rows, nothing to train
        path = os.path.join(kw["out"], "row.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
            work.remove(kw)
    t0 = time.time()
    bar = tqdm(total=len(work), desc="ablation runs", disable=not progress)
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
                + "".join(f"\nThe full variant's seed-{r['seed']} row is the finished quickstart run {r['source']}."
                          for r in rows if r.get("source"))
                + "\n\n" + table + "\n\n![ablation](ablation.png)\n")
    return table
