"""`fclm quickstart`: the whole FCLM recipe in miniature, on a laptop CPU, with no download.

Builds the tiny random model, generates the synthetic scene world, trains stage 1 (grounding,
captioning, GCG; L_ce + L_seg + L_self) then stage 2 (paired DLC / DL-RES examples; L_latent),
evaluates every task on held-out test scenes with the benchmark metric code, and writes
``metrics.json``, ``report.md``, ``loss_curves.png`` and prediction-vs-ground-truth overlays.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from importlib import resources

TASK_ORDER = ("res", "dlres", "reasonseg", "muse", "roc", "dlc", "gcg")


def packaged_config(name: str) -> str:
    """Path of a YAML shipped in ``fclm/configs/train``."""
    return str(resources.files("fclm").joinpath("configs", "train", name))


def stage_overrides(stage: str, seed: int, steps: int | None = None) -> list[str]:
    """What a quickstart run with ``seed`` changes in a packaged stage config: the seed (stage 2
    draws its data with ``seed + 1``) and, when given, the step count."""
    return [f"seed={seed if stage == 'stage1' else seed + 1}"] + ([f"steps={steps}"] if steps is not None else [])


def scene_size(extra1: list[str] = ()) -> int | None:
    """Side of the synthetic scenes the quickstart trains on (its stage-1 config's
    ``data.synthetic.image_size`` with ``extra1`` applied; None: the scene generator's default).
    The test scenes are drawn at the same size."""
    from .config import load_train_config

    return load_train_config(packaged_config("quickstart-stage1.yaml"), list(extra1)).data.synthetic.get("image_size")


def train_stages(out: str, stage1_steps: int | None = None, stage2_steps: int | None = None,
                 seed: int = 0, progress: bool = True, extra1: list[str] = (), extra2: list[str] = (),
                 timings: dict | None = None) -> str:
    """Stage 1 then stage 2 into ``out``; returns the final model folder ``out/model``.

    ``None`` steps: the packaged configs' own; ``stage2_steps=0`` skips stage 2 (``stage1_steps``
    must be at least 1)."""
    timings = timings if timings is not None else {}
    t0 = time.time()
    from .config import load_train_config
    from .trainer import Trainer

    if stage1_steps is not None and stage1_steps < 1:
        raise ValueError(f"stage1_steps must be at least 1, got {stage1_steps}: stage 2 starts from the stage-1 model")
    if stage2_steps is not None and stage2_steps < 0:
        raise ValueError(f"stage2_steps must be at least 0, got {stage2_steps}")
    s1 = [f"output_dir={out}/stage1", *stage_overrides("stage1", seed, stage1_steps), *extra1]
    cfg1 = load_train_config(packaged_config("quickstart-stage1.yaml"), s1)
    final1 = Trainer(cfg1, progress=progress).run()
    timings["stage1"] = time.time() - t0
    t0 = time.time()
    s2 = [f"output_dir={out}/stage2", f"model.path={final1}", *stage_overrides("stage2", seed, stage2_steps), *extra2]
    cfg2 = load_train_config(packaged_config("quickstart-stage2.yaml"), s2)
    if "image_size" in cfg1.data.synthetic:  # stage 2 sees stage 1's scenes unless extra2 names a size
        cfg2.data.synthetic.setdefault("image_size", cfg1.data.synthetic["image_size"])
    if cfg2.steps > 0:
        final = Trainer(cfg2, progress=progress).run()
    else:
        final = final1
    timings["stage2"] = time.time() - t0
    model_dir = os.path.join(out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(final, model_dir)
    return model_dir


def evaluate_all(model_dir: str, out: str, test_scenes: int = 60, tasks=TASK_ORDER, progress: bool = True,
                 image_size: int | None = None) -> dict:
    """Every task on held-out synthetic test scenes (``image_size`` px, the training scenes' size),
    with its trivial baseline beside it."""
    from ..data.synthetic import generate_scenes
    from ..eval.cli_eval import SYNTHETIC_MAX_NEW_TOKENS, evaluate, score_synthetic
    from ..eval.synthetic_metrics import (constant_caption_predictions, majority_label_predictions,
                                          whole_image_predictions)
    from ..infer.pipeline import FCLMPipeline

    pipe = FCLMPipeline.from_pretrained(model_dir, device="cpu")
    samples = generate_scenes(test_scenes, "test", seed=0, image_size=image_size)
    train_ref = generate_scenes(200, "train", seed=0, image_size=image_size)
    metrics = {}
    for task in tasks:
        tdir = os.path.join(out, "eval", task)
        shutil.rmtree(tdir, ignore_errors=True)
        r = evaluate(pipe, task, samples, tdir, progress=progress, synthetic=True,
                     max_new_tokens=SYNTHETIC_MAX_NEW_TOKENS.get(task))
        if task in ("res", "dlres", "reasonseg", "muse", "gcg"):
            base = score_synthetic(task, samples, whole_image_predictions(samples, task))["metrics"]
            base_name = "whole-image mask"
        elif task == "roc":
            preds, label = majority_label_predictions(train_ref, samples)
            base = score_synthetic(task, samples, preds)["metrics"]
            base_name = f"most frequent label ({label!r})"
        else:
            preds, cap = constant_caption_predictions(train_ref, samples)
            base = score_synthetic(task, samples, preds)["metrics"]
            base_name = f"constant caption ({cap!r})"
        if task == "gcg":  # the baseline has no caption: only its mask metrics mean anything
            base = {k: v for k, v in base.items() if k in ("mIoU", "AP50", "mask_recall")}
        metrics[task] = {"metrics": r["metrics"], "counts": r.get("counts", {}),
                         "baseline": {"name": base_name, "metrics": base}}
    return metrics


def _overlays(model_dir: str, out: str, n: int = 3, image_size: int | None = None) -> list[str]:
    """Prediction beside ground truth for a few test scenes (RES, DL-RES, ROC/DLC, GCG)."""
    import numpy as np
    from PIL import Image

    from ..data.masks import decode_rle
    from ..data.synthetic import generate_scenes
    from ..infer.pipeline import FCLMPipeline
    from ..infer.visualize import render_overlay

    pipe = FCLMPipeline.from_pretrained(model_dir, device="cpu")
    paths = []
    os.makedirs(os.path.join(out, "overlays"), exist_ok=True)
    for s in generate_scenes(n, "test", seed=0, image_size=image_size):
        img = s.image.open()
        ob = s.objects[0]
        gt = decode_rle(ob.mask)
        panels = []
        for text, style in ((ob.expressions[0], "res"), (ob.caption, "dlres")):
            res = pipe.segment(img, text, teacher_forced=True, prompt_style=style)
            pred = res.masks[0] if res.masks else np.zeros_like(gt)
            panels.append(render_overlay(img, [pred], [f"prediction: {text}"], title=style.upper()))
            panels.append(render_overlay(img, [gt], ["ground truth"], title=style.upper()))
        masks = [decode_rle(o.mask) for o in s.objects]
        labels = pipe.classify(img, masks)
        caps = pipe.describe(img, [masks[0]], max_new_tokens=48)
        panels.append(render_overlay(img, outlines=masks, outline_labels=[f"ROC: {l}" for l in labels],
                                     title="DLC: " + caps[0].text))
        panels.append(render_overlay(img, outlines=masks, outline_labels=[f"GT: {o.category}" for o in s.objects],
                                     title="GT: " + (ob.caption or "")))
        g = pipe.ground(img, max_new_tokens=96)
        panels.append(render_overlay(img, g.masks, [p.text for p in g.phrases if p.mask is not None], title="GCG: " + g.caption))
        panels.append(render_overlay(img, [decode_rle(o.mask) for o in s.objects], [p.text for p in s.phrases][: len(s.objects)],
                                     title="GT: " + (s.caption or "")))
        w, h = max(p.size[0] for p in panels), max(p.size[1] for p in panels)  # legends differ in height
        sheet = Image.new("RGB", (w * 2, h * 4), "white")
        for k, p in enumerate(panels):
            sheet.paste(p, ((k % 2) * w, (k // 2) * h))
        path = os.path.join(out, "overlays", f"{s.id}.png")
        sheet.save(path)
        paths.append(path)
    return paths


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else str(v)


def write_report(out: str, metrics: dict, overlays: list[str], timings: dict) -> str:
    lines = ["# FCLM quickstart report", "",
             "Tiny random FCLM trained from scratch on synthetic scenes (stage 1 then stage 2), evaluated on "
             "held-out test scenes with the benchmark metric code. Baselines are trivial predictors "
             "the model must beat.", "",
             f"Wall time: stage 1 {timings['stage1']:.0f} s, stage 2 {timings['stage2']:.0f} s, "
             f"evaluation {timings['eval']:.0f} s, total {timings['total']:.0f} s.", "",
             "| task | metric | FCLM (tiny) | baseline | baseline is |", "|---|---|---|---|---|"]
    for task, m in metrics.items():
        for k, v in m["metrics"].items():
            b = m["baseline"]["metrics"].get(k, "–")
            lines.append(f"| {task} | {k} | {_fmt(v)} | {_fmt(b)} | {m['baseline']['name']} |")
    lines += ["", "## Loss curves", "", "![loss curves](loss_curves.png)", "", "## Overlays",
              "", "Each sheet: RES prediction | ground truth; DL-RES prediction | ground truth; "
              "ROC labels + DLC caption | ground truth; GCG | ground truth.", ""]
    lines += [f"![{os.path.basename(p)}](overlays/{os.path.basename(p)})" for p in overlays]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_quickstart(out: str = "fclm-quickstart", stage1_steps: int | None = None, stage2_steps: int | None = None,
                   test_scenes: int = 60, seed: int = 0, progress: bool = True, extra1: list[str] = (),
                   extra2: list[str] = ()) -> dict:
    """Train, evaluate and report; ``extra1`` / ``extra2``: ``key=value`` overrides of the stage configs."""
    from .plots import plot_losses

    t0 = time.time()
    timings: dict = {}
    model_dir = train_stages(out, stage1_steps, stage2_steps, seed, progress, extra1, extra2, timings=timings)
    t1 = time.time()
    size = scene_size(extra1)
    metrics = evaluate_all(model_dir, out, test_scenes, progress=progress, image_size=size)
    overlays = _overlays(model_dir, out, image_size=size)
    t2 = time.time()
    logs = [p for p in (os.path.join(out, "stage1", "log.jsonl"), os.path.join(out, "stage2", "log.jsonl"))
            if os.path.exists(p)]
    plot_losses(logs, os.path.join(out, "loss_curves.png"), labels=["stage 1", "stage 2"][: len(logs)], chain=True)
    timings.update(eval=t2 - t1, total=t2 - t0)
    result = {"metrics": metrics, "timings_s": timings, "model": model_dir, "test_scenes": test_scenes,
              "scene_size": size}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_report(out, metrics, overlays, timings)
    return result
