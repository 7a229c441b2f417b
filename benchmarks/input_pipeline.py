"""Issue 10's input pipeline on the CPU: step time of the quickstart, image sharing, length grouping.

    python benchmarks/input_pipeline.py step-time --steps 12        # quickstart stage-1 s/step (wall + CPU)
    python benchmarks/input_pipeline.py sharing --batches 6          # stage-2 pairs: shared vs per-row images
    python benchmarks/input_pipeline.py grouping --steps 32          # padding with / without length grouping

``step-time`` only uses the trainer's public API, so the same file times an older checkout too
(``PYTHONPATH=old/src python benchmarks/input_pipeline.py step-time``): run both under the same
conditions (``taskset -c 1``, one after the other, several times) to compare. Each prints one
``SUMMARY {json}`` line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def _quickstart_cfg(name: str, overrides: list[str]):
    from fclm.train.config import load_train_config
    from fclm.train.quickstart import packaged_config

    return load_train_config(packaged_config(name), overrides)


def step_time(args) -> dict:
    """Wall and CPU seconds per quickstart stage-1 step (data building included, in-process)."""
    import torch

    from fclm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _quickstart_cfg("quickstart-stage1.yaml", [f"steps={args.steps}", f"output_dir={tmp}",
                                                          "save_every=1000000", *args.set])
        tr = Trainer(cfg, progress=False)
        batches = iter(tr.batches())
        wall, cpu, losses = [], [], []
        for _ in range(cfg.steps):
            t, c = time.perf_counter(), time.process_time()
            losses.append(tr.train_step(batches)["loss"])
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    skip = min(args.skip, len(wall) - 1)
    return {"mode": "step-time", "code": os.path.dirname(os.path.dirname(sys.modules["fclm"].__file__)),
            "threads": torch.get_num_threads(), "steps_timed": len(wall) - skip,
            "wall_s_per_step": statistics.mean(wall[skip:]), "cpu_s_per_step": statistics.mean(cpu[skip:]),
            "wall_median": statistics.median(wall[skip:]), "final_loss": losses[-1], "loadavg": os.getloadavg()}


def sharing(args) -> dict:
    """Stage-2 micro-batches (DLC + DL-RES pairs), three ways, interleaved batch by batch: ``before``
    (every row its own image, SAM over every row: the code before, emulated), ``per_row`` (SAM only
    for the rows that need it) and ``shared`` (each distinct image once). Encoder inputs are counted
    with forward hooks; the first batch is a warm-up."""
    import torch
    import yaml

    import fclm.model.modeling_fclm as mf
    from fclm.model.builders import build_tiny
    from fclm.train.config import load_train_config
    from fclm.train.data import TrainingStream

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"stage": "stage2", "output_dir": tmp, "model": {"init": "tiny"},
                            "data": {"synthetic": {"num_scenes": 500, "seed": 0, "image_size": args.image_size},
                                     "pair_stage2": True,
                                     "sources": [{"name": "synthetic", "tasks": ["pair_stage2"]}]},
                            "steps": args.batches + 1, "per_device_batch": args.batch}, f)
        cfg = load_train_config(path)
    model, proc = build_tiny(seed=0, latent_weight=1.0, latent_scope="pairs", self_recon_weight=0.0)
    stream = TrainingStream(cfg, proc, cfg.steps * cfg.per_device_batch)
    counts = {"vision": 0, "sam": 0}
    vis_fwd, sam_fwd, real_sam = model.model.visual.forward, model.sam.vision_encoder.forward, mf.sam_image_embeddings

    def count_vis(px, *a, **k):
        counts["vision"] += px.shape[0]
        return vis_fwd(px, *a, **k)

    def count_sam(px, *a, **k):
        counts["sam"] += px.shape[0]
        return sam_fwd(px, *a, **k)

    model.model.visual.forward, model.sam.vision_encoder.forward = count_vis, count_sam
    out = {n: {"vision_patches": 0, "sam_images": 0, "fwd_bwd_s": 0.0} for n in ("before", "per_row", "shared")}
    for s in range(cfg.steps):
        shared = proc.normalize_images(stream.micro_batch(s, 0, 0, 1))
        encoded = [e for d in stream.micro_draws(s, 0, 0, 1) for e in stream.examples(d)]
        per_row = proc.normalize_images(proc.collate(encoded))
        order = [("before", per_row), ("per_row", per_row), ("shared", shared)]
        for name, b in order if s % 2 else order[::-1]:
            full = b["sam_pixel_values"]
            if name == "before":  # SAM over the whole batch, each call handed the rows it asked for
                mf.sam_image_embeddings = lambda sam, px: (
                    real_sam(sam, full)[[next(j for j in range(len(full)) if torch.equal(full[j], p)) for p in px]]
                    if px.shape[1:] == full.shape[1:] and any(torch.equal(full[0], p) for p in px) else real_sam(sam, px))
            counts.update(vision=0, sam=0)
            model.train()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            t = time.perf_counter()
            model(**b).loss.backward()
            dt = time.perf_counter() - t
            mf.sam_image_embeddings = real_sam
            if s:
                o = out[name]
                o["vision_patches"] += counts["vision"]
                o["sam_images"] += counts["sam"]
                o["fwd_bwd_s"] += dt
    for o in out.values():
        o["fwd_bwd_s_per_batch"] = o.pop("fwd_bwd_s") / args.batches
    return {"mode": "sharing", "image_size": args.image_size, "draws_per_batch": args.batch,
            "rows_per_batch": 2 * args.batch, "batches": args.batches, "loadavg": os.getloadavg(), **out}


def grouping(args) -> dict:
    """Padding share of the encoded micro-batches with and without ``data.group_by_length``."""
    from fclm.train.data import TrainingStream

    res = {}
    for name, extra in (("plain", []), ("grouped", ["data.group_by_length=true",
                                                   f"data.length_group_steps={args.window}"])):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _quickstart_cfg("quickstart-stage1.yaml", [f"steps={args.steps}", f"output_dir={tmp}", *extra])
        from fclm.model.builders import build_tiny

        _, proc = build_tiny(seed=cfg.seed)
        stream = TrainingStream(cfg, proc, cfg.steps * cfg.global_batch_per_process)
        real = padded = 0
        t = time.perf_counter()
        for s in range(cfg.steps):
            a = stream.micro_batch(s, 0, 0, 1)["attention_mask"]
            real += int(a.sum())
            padded += a.numel()
        res[name] = {"tokens": real, "padded_tokens": padded, "padding_share": 1 - real / padded,
                     "data_s_per_step": (time.perf_counter() - t) / cfg.steps}
    return {"mode": "grouping", "config": "quickstart-stage1.yaml", "steps": args.steps, "window": args.window,
            "batch": cfg.per_device_batch, "loadavg": os.getloadavg(), **res}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("step-time")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=3, help="first steps left out of the mean (warm-up)")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p = sub.add_parser("sharing")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--batch", type=int, default=2, help="draws per micro-batch (2 rows each)")
    p.add_argument("--image-size", type=int, default=256)
    p = sub.add_parser("grouping")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--window", type=int, default=16)
    args = ap.parse_args(argv)
    summary = {"step-time": step_time, "sharing": sharing, "grouping": grouping}[args.mode](args)
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
