"""Inference goals of issue 12, each beside plain transformers on the same model in the same run.

Default: random-weight FCLM-3B (``random_preset("fclm-3b")``, bf16, no download) on one GPU,
≤ 5 minutes on an H100. ``--tiny``: the tiny test model on the CPU (float32, small sizes) to check
the script in about a minute. Prints a JSON summary (``--out`` also writes it).

Measured (goals on one H100, FCLM-3B bf16, in brackets):

* ``decode_ms_per_token`` at batch 1 and 32 [≤ 4 ms]: ours = ``run_batch`` rows of one image
  (shared prefix, batched decode; ``ours_static_cache``: ``static_cache=True``, image prefix KV
  kept once, fixed-shape steps); plain = ``model.generate`` on the processor's padded batch.
  Per-token time is the difference of two runs with T₂ and T₁ new tokens over T₂ − T₁
  (end-of-turn ignored), so prefill and the vision encoder cancel out;
* ``vision_encoder_ms`` at 1008² [≤ 25 ms]: ours (every window of a block in one SDPA call) vs
  transformers' per-window loop;
* ``sam_crop_ms`` for 32 regions: ours (pyramid crops with tensor ops on the device, batched SAM
  encoder in chunks of ``crop_batch``) vs one PIL crop and one SAM call per region; and under the
  cheaper local-aggregation options (off by default): ``crop_<S>`` = crops of ``--crop-size``
  (``region_crop_size``; default 512, ``--tiny`` 128), ``image_source`` = the one full-image SAM pass
  that ``region_feature_source="image"`` pools from instead of crops;
* ``dlc_regions_per_s`` at 1, 8, 32 regions per image with 128-token captions [≥ 40 at 32]:
  ``FCLMPipeline.describe`` vs ``model.generate`` on the processor's batch of the same rows, and
  ``describe`` under each cheaper option (same weights, the config switched for the call).

    python benchmarks/gpu_infer.py            # GPU, FCLM-3B random weights
    python benchmarks/gpu_infer.py --tiny     # CPU check
    python benchmarks/gpu_infer.py --compile  # also torch.compile'd static-cache decode steps
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 1) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (device synchronised) and the last result."""
    ts, out = [], None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def make_scene(n: int, side: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))
    yy, xx = np.ogrid[:side, :side]
    masks = []
    for i in range(n):
        cx, cy = rng.uniform(0.15, 0.85, 2) * side
        rx, ry = rng.uniform(0.04, 0.15, 2) * side
        m = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) if i % 2 else ((abs(xx - cx) <= rx) & (abs(yy - cy) <= ry))
        masks.append(np.ascontiguousarray(m))
    return img, masks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (script check)")
    ap.add_argument("--preset", default="fclm-3b", choices=["fclm-3b", "fclm-7b"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--image-size", type=int, default=None, help="square image side (default 1008; --tiny: 224)")
    ap.add_argument("--regions", type=int, nargs="+", default=None, help="DLC regions per image (default 1 8 32)")
    ap.add_argument("--caption-tokens", type=int, default=None, help="DLC new tokens (default 128; --tiny: 8)")
    ap.add_argument("--decode-tokens", type=int, nargs=2, default=None, metavar=("T1", "T2"),
                    help="new-token counts differenced for ms/token (default 16 80; --tiny: 2 6)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (median; default 3, --tiny 1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "vision", "sam", "dlc", "plain"])
    ap.add_argument("--crop-size", type=int, default=None,
                    help="region_crop_size of the smaller-crop option (default 512; --tiny: 128)")
    ap.add_argument("--compile", action="store_true",
                    help="also time static-cache decode steps under torch.compile (adds compile time)")
    ap.add_argument("--out", help="also write the JSON summary here")
    args = ap.parse_args(argv)

    import torch

    from fclm.infer import FCLMPipeline
    from fclm.infer.decoding import GenerationOptions, Request, run_batch
    from fclm.infer.pipeline import PROMPTS
    from fclm.model.builders import build_tiny, random_preset

    if args.tiny:
        torch.set_num_threads(1)  # the tiny model's matmuls are too small to gain from threads
        device = args.device or "cpu"
        model, proc = build_tiny(None, seed=0)
        model.to(device)
        side, regions, cap_tokens, (t1, t2), reps = (args.image_size or 224, args.regions or [1, 2, 4],
                                                     args.caption_tokens or 8, args.decode_tokens or (2, 6),
                                                     args.repeats or 1)
        what = "tiny random FCLM, float32"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else None)
        if device is None:
            print("no CUDA device: run with --tiny for a CPU check", file=sys.stderr)
            return 2
        t = time.perf_counter()
        model, proc = random_preset(args.preset, dtype=torch.bfloat16, device=device)
        print(f"built {args.preset} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        side, regions, cap_tokens, (t1, t2), reps = (args.image_size or 1008, args.regions or [1, 8, 32],
                                                     args.caption_tokens or 128, args.decode_tokens or (16, 80),
                                                     args.repeats or 3)
        what = f"random-weight {args.preset.upper()}, bfloat16"
    model.eval()
    from contextlib import contextmanager

    from fclm.model.processing_fclm import _image_processor

    small_crop = args.crop_size or (128 if args.tiny else 512)
    options = {f"crop_{small_crop}": dict(region_crop_size=small_crop), "image_source": dict(region_feature_source="image")}

    @contextmanager
    def region_option(**kw):
        """The model's config (and the processor made from it) switched to a cheaper option for a while."""
        old = {k: getattr(model.config, k) for k in kw}
        for k, v in kw.items():
            setattr(model.config, k, v)
        model.config.validate_fclm()
        proc.configure_for(model.config)
        try:
            yield
        finally:
            for k, v in old.items():
                setattr(model.config, k, v)
            proc.configure_for(model.config)

    proc.image_long_side = side  # the vision encoder sees the image at its own size (1008² → 72×72 patches)
    proc.image_processor = _image_processor(side, proc.patch_size, proc.merge_size)
    pipe = FCLMPipeline(model, proc)
    n_max = max(regions + [32 if not args.tiny else 4])
    img, masks = make_scene(n_max, side)
    dev_name = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else (platform.processor() or "cpu")
    summary = {"model": what, "device": dev_name, "image": [side, side], "torch": torch.__version__,
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    plain = "plain" not in args.skip
    stops = {proc.im_end_id, proc.pad_id}

    def ours(n, tokens, static=False):
        reqs = [Request(img, PROMPTS["dlc"], [m], image_key="img") for m in masks[:n]]
        return run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=tokens, ignore_eos=True,
                                                              static_cache=static))

    def ours_static(n, tokens):
        return ours(n, tokens, static=True)

    def ours_compiled(n, tokens):
        reqs = [Request(img, PROMPTS["dlc"], [m], image_key="img") for m in masks[:n]]
        return run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=tokens, ignore_eos=True,
                                                              static_cache=True, compile_step=True))

    def hf(n, tokens):
        inputs = proc(images=img, text=[PROMPTS["dlc"]] * n, regions=[[m] for m in masks[:n]]).to(device)
        inputs["region_masks"] = [m.to(device) for m in inputs["region_masks"]]
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    # warm-up (kernels, allocator)
    ours(2, 2)
    if plain:
        hf(1, 2)

    if "decode" not in args.skip:
        res = {}
        for b in (1, 32 if not args.tiny else 4):
            row = {}
            variants = [("ours", ours), ("ours_static_cache", ours_static), ("plain_generate", hf)]
            if args.compile:
                variants.insert(2, ("ours_static_compiled", ours_compiled))
            for name, fn in variants:
                if name == "plain_generate" and not plain:
                    continue
                try:
                    if name == "ours_static_compiled":
                        fn(b, t1), fn(b, t2)  # compile (and recompile for this batch) outside the timing
                    a, _ = timed(lambda: fn(b, t1), device, reps)
                    c, _ = timed(lambda: fn(b, t2), device, reps)
                    row[name] = round((c - a) / (t2 - t1) * 1000, 3)
                except Exception as e:  # report and go on: one failing variant must not cost the run
                    row[name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            res[f"batch_{b}"] = row
            print(json.dumps({"decode_ms_per_token": {f"batch_{b}": row}}), file=sys.stderr)
        summary["decode_ms_per_token"] = res

    if "vision" not in args.skip:
        enc = proc.image_processor(images=[img], return_tensors="pt")
        pv, grid = enc["pixel_values"].to(device, model.dtype), enc["image_grid_thw"].to(device)
        with torch.inference_mode():
            t_ours, _ = timed(lambda: model.encode_images(pv, grid), device, reps)
            t_loop, _ = timed(lambda: model.model.get_image_features(pv, grid), device, reps)
        summary["vision_encoder_ms"] = {"grid_thw": grid[0].tolist(), "ours": round(t_ours * 1000, 2),
                                        "transformers_per_window": round(t_loop * 1000, 2)}
        print(json.dumps({"vision_encoder_ms": summary["vision_encoder_ms"]}), file=sys.stderr)

    if "sam" not in args.skip:
        from fclm.model.mask_decoding import sam_image_embeddings
        from fclm.model.processing_fclm import CropSource, region_crop, region_crops, sam_preprocess

        n = 32 if not args.tiny else 4
        S = proc.sam_image_size

        def sam_ours(size=S):
            src = CropSource(img, size, device)
            tm = [torch.from_numpy(m).to(device) for m in masks[:n]]
            crops, _ = region_crops(src, tm, proc.crop_margin)
            step = 8
            return [sam_image_embeddings(model.sam, crops[i: i + step]) for i in range(0, n, step)]

        def sam_full_image():  # region_feature_source="image": one pass, whatever the number of regions
            px, _ = sam_preprocess(img, S)
            return sam_image_embeddings(model.sam, torch.from_numpy(px)[None].to(device))

        def sam_per_region():
            out = []
            for m in masks[:n]:
                c, _ = region_crop(img, m, S, proc.crop_margin)
                out.append(sam_image_embeddings(model.sam, torch.from_numpy(c)[None].to(device)))
            return out

        with torch.inference_mode():
            t_ours, _ = timed(sam_ours, device, reps)
            t_loop, _ = timed(sam_per_region, device, reps)
            sam_ours(small_crop)  # warm-up at the new size
            t_small, _ = timed(lambda: sam_ours(small_crop), device, reps)
            t_image, _ = timed(sam_full_image, device, reps)
        summary["sam_crop_ms"] = {"regions": n, "crop_size": S, "ours": round(t_ours * 1000, 1),
                                  "per_region_calls": round(t_loop * 1000, 1),
                                  f"crop_{small_crop}": round(t_small * 1000, 1),
                                  "image_source": round(t_image * 1000, 1)}
        print(json.dumps({"sam_crop_ms": summary["sam_crop_ms"]}), file=sys.stderr)

    if "dlc" not in args.skip:
        rows = []
        for n in regions:
            t_ours, res = timed(lambda: pipe.describe(img, masks[:n], max_new_tokens=cap_tokens, ignore_eos=True),
                                device, reps)
            t_st, res_st = timed(lambda: pipe.describe(img, masks[:n], max_new_tokens=cap_tokens, ignore_eos=True,
                                                       static_cache=True), device, reps)
            row = {"regions": n, "new_tokens": cap_tokens, "ours_s": round(t_ours, 3),
                   "ours_regions_per_s": round(n / t_ours, 2), "ours_static_cache_regions_per_s": round(n / t_st, 2),
                   "static_cache_same_text": [r.raw for r in res] == [r.raw for r in res_st]}
            for name, kw in options.items():
                with region_option(**kw):
                    pipe.describe(img, masks[:1], max_new_tokens=2, ignore_eos=True)  # warm-up (new shapes)
                    t_opt, _ = timed(lambda: pipe.describe(img, masks[:n], max_new_tokens=cap_tokens, ignore_eos=True),
                                     device, reps)
                row[f"ours_{name}_regions_per_s"] = round(n / t_opt, 2)
            if plain:
                t_hf, out = timed(lambda: hf(n, cap_tokens), device, reps)
                row.update(plain_generate_s=round(t_hf, 3), plain_generate_regions_per_s=round(n / t_hf, 2),
                           speedup=round(t_hf / t_ours, 2))
                row["same_text"] = [r.raw for r in res] == proc.batch_decode(out, out.shape[1] - cap_tokens)
            rows.append(row)
            print(json.dumps({"dlc": row}), file=sys.stderr)
        summary["dlc_regions_per_s"] = rows
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
