"""CPU benchmarks of region describing with the tiny random FCLM (the test-suite size).

Greedy decoding of the DLC prompt, a fixed number of new tokens per region (end-of-turn ignored, so
every path does the same amount of decoding). Every mode asserts identical greedy text across the
paths it compares, then prints timings as JSON.

* ``--mode separate`` (default): N regions of one image in one batched call vs N separate calls;
* ``--mode pixels``: the same N-region batched call on a 640×480 and a 4000×3000 image (boxes and
  crops must not make per-region cost grow with the image's pixel count; bar: ratio ≤ 1.5);
* ``--mode generate``: the N-region batched call vs N separate Hugging Face ``model.generate``
  calls (``processor(images=, text=, regions=)`` per region; bar: ≥ 8× at N = 32); wall time and
  this process's CPU time (steadier on a shared machine).

    .venv/bin/python benchmarks/batched_regions_cpu.py [--regions 8] [--new-tokens 32] [--repeats 3]
    .venv/bin/python benchmarks/batched_regions_cpu.py --mode pixels --regions 32 --new-tokens 16
    .venv/bin/python benchmarks/batched_regions_cpu.py --mode generate --regions 32 --new-tokens 16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def scene(n: int, h: int = 240, w: int = 320, seed: int = 0, relative: bool = False):
    """Random image and n ellipse/box masks (``relative``: sizes as fractions of the image, so the
    same layout at any resolution)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    masks = []
    yy, xx = np.ogrid[:h, :w]
    for i in range(n):
        if relative:
            cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
            rx, ry = rng.uniform(0.03, 0.15) * w, rng.uniform(0.03, 0.15) * h
        else:
            cx, cy = rng.uniform(40, w - 40), rng.uniform(40, h - 40)
            rx, ry = rng.uniform(10, 40), rng.uniform(10, 40)
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1 if i % 2 else \
            (abs(xx - cx) <= rx) & (abs(yy - cy) <= ry)
        masks.append(m)
    return img, masks


def bench_generate(pipe, args) -> dict:
    """Batched N-region describe vs N separate ``model.generate`` calls; identical greedy text."""
    from fclm.infer.pipeline import PROMPTS

    model, proc = pipe.model, pipe.processor
    img, masks = scene(args.regions)
    stops = {proc.im_end_id, proc.pad_id}

    def separate():
        texts = []
        for m in masks:
            inputs = proc(images=img, text=PROMPTS["dlc"], regions=[m])
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False)
            texts.append(proc.batch_decode(out, inputs["input_ids"].shape[1])[0])
        return texts

    gen = dict(max_new_tokens=args.new_tokens, ignore_eos=True)
    pipe.describe(img, masks[:2], **gen)  # warm-up
    separate_warm = proc(images=img, text=PROMPTS["dlc"], regions=[masks[0]])
    model.generate(**separate_warm, max_new_tokens=2)
    t_b, t_s, c_b, c_s = [], [], [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        batched = [r.raw for r in pipe.describe(img, masks, **gen)]
        t_b.append(time.perf_counter() - t)
        c_b.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        single = separate()
        t_s.append(time.perf_counter() - t)
        c_s.append(time.process_time() - c)
        assert batched == single, "batched describe and separate generate calls differ"
    tb, ts = statistics.median(t_b), statistics.median(t_s)
    cb, cs = statistics.median(c_b), statistics.median(c_s)
    # CPU time of this process besides wall time: on a shared machine it is the steadier figure
    return {"batched_s": round(tb, 4), "separate_generate_s": round(ts, 4), "speedup": round(ts / tb, 2),
            "batched_cpu_s": round(cb, 4), "separate_generate_cpu_s": round(cs, 4), "speedup_cpu": round(cs / cb, 2),
            "identical_greedy_outputs": True, "image": list(img.size)}


def bench_pixels(pipe, args) -> dict:
    """Batched N-region describe at 640×480 vs 4000×3000 (same layout of regions), median of repeats."""
    gen = dict(max_new_tokens=args.new_tokens, ignore_eos=True)
    out = {}
    texts = {}
    scenes = {(w, h): scene(args.regions, h, w, relative=True) for w, h in ((640, 480), (4000, 3000))}
    for img, masks in scenes.values():
        pipe.describe(img, masks[:2], **gen)  # warm-up
    times = {k: [] for k in scenes}
    for _ in range(args.repeats):
        for (w, h), (img, masks) in scenes.items():
            t = time.perf_counter()
            res = pipe.describe(img, masks, **gen)
            times[(w, h)].append(time.perf_counter() - t)
            texts[(w, h)] = [r.raw for r in res]
    for (w, h), ts in times.items():
        out[f"{w}x{h}_s"] = round(statistics.median(ts), 4)
    out["ratio_4000x3000_over_640x480"] = round(out["4000x3000_s"] / out["640x480_s"], 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["separate", "pixels", "generate"], default="separate")
    ap.add_argument("--regions", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from fclm.infer import FCLMPipeline
    from fclm.model.builders import build_tiny

    try:
        from conftest import TINY_TEXTS as texts
    except ImportError:  # pragma: no cover
        texts = None
    with tempfile.TemporaryDirectory() as d:
        build_tiny(os.path.join(d, "m"), seed=0, texts=texts)
        pipe = FCLMPipeline.from_pretrained(os.path.join(d, "m"), device="cpu", dtype=torch.float32)
    if args.mode in ("pixels", "generate"):
        res = (bench_pixels if args.mode == "pixels" else bench_generate)(pipe, args)
        res.update(regions=args.regions, new_tokens_per_region=args.new_tokens, torch_threads=torch.get_num_threads())
        print(json.dumps(res, indent=2))
        return 0
    img, masks = scene(args.regions)
    gen = dict(max_new_tokens=args.new_tokens, ignore_eos=True)

    pipe.describe(img, masks[:2], **gen)  # warm-up
    t_batch, t_single = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        batched = pipe.describe(img, masks, **gen)
        t_batch.append(time.perf_counter() - t)
        t = time.perf_counter()
        single = [pipe.describe(img, [m], **gen)[0] for m in masks]
        t_single.append(time.perf_counter() - t)
        assert [r.raw for r in batched] == [r.raw for r in single], "batched and per-region greedy outputs differ"
    tb, ts = statistics.median(t_batch), statistics.median(t_single)
    print(json.dumps({
        "regions": args.regions, "new_tokens_per_region": args.new_tokens, "image": list(img.size),
        "batched_s": round(tb, 4), "separate_calls_s": round(ts, 4), "speedup": round(ts / tb, 2),
        "identical_greedy_outputs": True, "torch_threads": torch.get_num_threads(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
