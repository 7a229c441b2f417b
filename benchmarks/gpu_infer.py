"""Inference throughput: naive per-region decoding vs the batched path, and RES latency.

Default: random-weight FCLM-3B (``random_preset("fclm-3b")``, bf16, no download) on the GPU with a
1024-px image. ``--tiny``: the tiny test model on the CPU (float32, 224-px model input), to check
the script in well under a minute.

Measured, per regions-per-image count N in ``--regions`` (default 1, 8, 32):

* ROC: the ROC prompt, at most 8 new tokens (greedy; end-of-turn ignored so every row decodes 8);
* DLC: the DLC prompt, exactly 64 new tokens (end-of-turn ignored);
* ``naive``: one region per call through the same decode loop (vision encoder, full prompt prefill
  and decoding per region, batch 1 — how LISA/GLaMM/Osprey-style inference processes regions),
  timed on ``min(N, --naive-max)`` regions and reported as regions/s;
* ``batched``: all N regions in one call (vision encoder once, shared prefix prefill once, N
  suffixes, one batched decode loop with a KV cache);
* RES: teacher-forced grounding latency per query, one query per call and 8 queries of one image in
  one call (per-query figure), masks decoded at the original size.

Prints a JSON summary (and writes it to ``--out`` when given).

    python benchmarks/gpu_infer.py            # GPU, FCLM-3B random weights
    python benchmarks/gpu_infer.py --tiny     # CPU check
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_scene(n: int, side: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))
    yy, xx = np.mgrid[:side, :side]
    masks = []
    for i in range(n):
        cx, cy = rng.uniform(0.15, 0.85, 2) * side
        rx, ry = rng.uniform(0.04, 0.12, 2) * side
        m = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) if i % 2 else ((abs(xx - cx) <= rx) & (abs(yy - cy) <= ry))
        masks.append(m)
    return img, masks


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (script check)")
    ap.add_argument("--preset", default="fclm-3b", choices=["fclm-3b", "fclm-7b"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--image-size", type=int, default=None, help="square image side (default 1024; --tiny: 224)")
    ap.add_argument("--regions", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--naive-max", type=int, default=4, help="regions timed on the naive path per N")
    ap.add_argument("--dlc-tokens", type=int, default=64)
    ap.add_argument("--roc-tokens", type=int, default=8)
    ap.add_argument("--skip", nargs="*", default=[], choices=["roc", "dlc", "res", "naive"])
    ap.add_argument("--out", help="also write the JSON summary here")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; --tiny: 1)")
    args = ap.parse_args(argv)

    import torch

    if args.threads or args.tiny:  # the tiny model's matmuls are too small to gain from threads
        torch.set_num_threads(args.threads or 1)

    from fclm.infer import FCLMPipeline
    from fclm.model.builders import build_tiny, random_preset

    if args.tiny:
        device = args.device or "cpu"
        model, proc = build_tiny(None, seed=0)
        model.to(device)
        side = args.image_size or 224
        what = "tiny random FCLM, float32"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else None)
        if device is None:
            print("no CUDA device: run with --tiny for a CPU check", file=sys.stderr)
            return 2
        t = time.perf_counter()
        model, proc = random_preset(args.preset, dtype=torch.bfloat16, device=device)
        print(f"built {args.preset} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        side = args.image_size or 1024
        what = f"random-weight {args.preset.upper()}, bfloat16"
    pipe = FCLMPipeline(model.eval(), proc)
    img, masks = make_scene(max(args.regions), side)
    summary = {"model": what, "device": str(torch.cuda.get_device_name(0) if torch.device(device).type == "cuda"
                                            else platform.processor() or "cpu"),
               "image": [side, side], "torch": torch.__version__}

    # warm-up (kernels, allocator)
    pipe.describe(img, masks[:2], max_new_tokens=4, ignore_eos=True)
    pipe.segment(img, "the red circle", teacher_forced=True)

    for task, prompt_kw, new in (("roc", {"detailed": None}, args.roc_tokens), ("dlc", {"detailed": True}, args.dlc_tokens)):
        if task in args.skip:
            continue
        rows = []
        for n in args.regions:
            gen = dict(max_new_tokens=new, ignore_eos=True)
            run = (lambda ms: pipe.classify_many([(img, ms)], **gen)) if task == "roc" else \
                  (lambda ms: pipe.describe(img, ms, **gen))
            tb, _ = timed(lambda: run(masks[:n]), device)
            row = {"regions": n, "new_tokens": new, "batched_s": round(tb, 3), "batched_regions_per_s": round(n / tb, 2)}
            if "naive" not in args.skip:
                k = min(n, args.naive_max)
                tn, _ = timed(lambda: [run([m]) for m in masks[:k]], device)
                row.update(naive_regions_timed=k, naive_s_per_region=round(tn / k, 3),
                           naive_regions_per_s=round(k / tn, 2), speedup=round((n / tb) / (k / tn), 2))
            rows.append(row)
            print(json.dumps({task: row}), file=sys.stderr)
        summary[task] = rows

    if "res" not in args.skip:
        exprs = ["the red circle", "the blue square on the left", "a small green triangle", "the striped object",
                 "the largest thing", "the object at the top", "the yellow star", "the purple ring"]
        t1, _ = timed(lambda: [pipe.segment(img, e, teacher_forced=True) for e in exprs[:4]], device)
        q = [(img, pipe.build_segment_prompt(e), "Sure, [SEG].") for e in exprs]
        t8, res = timed(lambda: pipe.run_grounding(q), device)
        assert all(len(r.masks) == 1 and r.masks[0].shape == (side, side) for r in res)
        summary["res_teacher_forced"] = {"latency_s_one_query_per_call": round(t1 / 4, 4),
                                         "latency_s_per_query_8_per_call": round(t8 / 8, 4)}
    if torch.device(device).type == "cuda":
        summary["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
