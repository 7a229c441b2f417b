"""GPU smoke test: random-weight FCLM-3B, one training step with every loss, two inferences.

    python benchmarks/gpu_smoke.py --out gpu_smoke.json          # FCLM-3B, bf16, one GPU
    python benchmarks/gpu_smoke.py --grad-ckpt --steps 2          # gradient checkpointing, warm step
    python benchmarks/gpu_smoke.py --tiny --out tiny.json         # tiny model, CPU fp32 (what tests run)
    python benchmarks/gpu_smoke.py --dry-run                      # FCLM-3B on the meta device: sizes only

Training: a batch of 2 (square images of ``--image-size`` px, random masks): a DL-RES grounding
sample (caption → ``Sure, [SEG].``) and the DLC captioning sample built from the same region (one
``<region>``), so the step has L_ce, L_seg (Dice + BCE), L_self (``<pos>`` decoded back into the input
mask) and L_latent (``[SEG]`` ↔ ``<pos>``; both weights forced > 0). ``apply_stage(model, "stage1")``,
AdamW (lr 2e-5), gradient clipping at 1.0. Inference (``fclm.infer.FCLMPipeline``, greedy,
fixed length: end-of-turn suppressed): one captioning (``--new-tokens``, default 32) and one grounding
query, teacher-forced (``Sure, [SEG].`` → one mask) and free generation. Prints wall times
(``torch.cuda.synchronize`` on GPU), peak memory (``torch.cuda.max_memory_allocated`` per phase on
GPU; process peak RSS on CPU), every loss and one ``SUMMARY {json}`` line; ``--out`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

import numpy as np

CAPTION = ("A large red striped circle in the upper left of the picture, partly covering a small blue "
           "square, with a thin green ring around its border.")
DLC_USER = "Can you provide me with a detailed description of the region in the picture marked by <region>?"
DLRES_USER = CAPTION.rstrip(".") + ". Please output segmentation mask."
GROUND_USER = "What is the red circle in this image? Please output segmentation mask."
SEG_ANSWER = "Sure, [SEG]."
TEXTS = [DLC_USER, DLRES_USER, GROUND_USER, SEG_ANSWER, CAPTION,
         "What is the category of <region>? Using only one word or phrase.", "circle square ring star"] * 4
GIB = 2 ** 30


def random_inputs(size: int, seed: int = 0):
    """A noise image (size × size) and one random elliptical region mask."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.1, 0.25, 2) * size
    return img, ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def encode_batch(processor, image, mask) -> dict:
    """DL-RES (grounding) + DLC (captioning) of one region, paired for L_latent."""
    ground = processor.encode(image, DLRES_USER, SEG_ANSWER, target_masks=[mask.astype(np.uint8)],
                              pair_keys=([], ["r0"]))
    caption = processor.encode(image, DLC_USER, CAPTION, region_masks=[mask], pair_keys=(["r0"], []))
    return processor.collate([ground, caption])


class Meter:
    """Wall time and peak memory per phase (CUDA: reset per phase; CPU: process peak RSS)."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"
        self.times, self.peak_gib = {}, {}

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()

    def stop(self, name: str) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        self.times[name] = round(dt, 4)
        if self.cuda:
            self.peak_gib[name] = round(self.torch.cuda.max_memory_allocated() / GIB, 3)
        else:  # ru_maxrss is KiB on Linux, bytes on macOS; it never resets
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            self.peak_gib[name] = round(rss / GIB, 3)
        print(f"  {name:<22} {dt:8.3f} s   peak {self.peak_gib[name]:.3f} GiB", flush=True)
        return dt


def dry_run(args) -> dict:
    """FCLM-3B on the meta device: parameter counts, sequence lengths and a static memory estimate."""
    import torch

    from fclm.model.builders import build_tiny_tokenizer, preset_config, set_token_ids
    from fclm.model.modeling_fclm import FCLMForConditionalGeneration
    from fclm.model.processing_fclm import FCLMProcessor
    from fclm.model.stages import apply_stage, count_parameters

    processor = FCLMProcessor(build_tiny_tokenizer(TEXTS), max_length=8192)
    config = preset_config(args.preset)
    set_token_ids(config, processor)
    with torch.device("meta"):
        model = FCLMForConditionalGeneration(config)
    counts = count_parameters(model)
    apply_stage(model, "stage1")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(counts.values())
    batch = encode_batch(processor, *random_inputs(args.image_size))
    bytes_per = torch.finfo(getattr(torch, args.dtype or "bfloat16")).bits // 8
    est = {"weights": total * bytes_per, "grads": trainable * bytes_per, "adamw_states": 2 * trainable * bytes_per}
    return {"mode": "dry-run", "model": args.preset, "dtype": args.dtype or "bfloat16",
            "params": counts, "params_total": total, "trainable_params": trainable,
            "seq_len": int(batch["input_ids"].shape[1]), "tokens": int(batch["attention_mask"].sum()),
            "image_tokens_per_image": int(batch["image_grid_thw"][0].prod()) // 4,
            "static_memory_gib": {k: round(v / GIB, 2) for k, v in est.items()}
            | {"total_excl_activations": round(sum(est.values()) / GIB, 2)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random model (CPU, fp32 by default)")
    ap.add_argument("--preset", default="fclm-3b", choices=["fclm-3b", "fclm-7b"])
    ap.add_argument("--device", default=None, help="default: cuda when available (not with --tiny), else cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 (full size), float32 (--tiny)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the training step")
    ap.add_argument("--steps", type=int, default=1, help="training steps (the first one is reported as well)")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=32, help="new tokens per free generation (<= 32 is the brief)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="meta device only: parameter counts and a memory estimate")
    ap.add_argument("--out", default=None, help="write the JSON summary here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import transformers

    if args.dry_run:
        summary = dry_run(args)
    else:
        summary = run(args, torch)
        summary["env"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "python": platform.python_version(), "host": platform.node(),
                          "gpu": torch.cuda.get_device_name() if summary["device"].startswith("cuda") else None}
    line = json.dumps(summary, sort_keys=True)
    print("SUMMARY " + line, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0 if summary.get("ok", True) else 1


def run(args, torch) -> dict:
    from fclm.model.builders import build_tiny, random_preset
    from fclm.model.stages import apply_stage

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no CUDA device")
    if not args.tiny and device.type == "cpu":
        raise SystemExit("the full-size model needs a GPU: use --tiny (CPU) or --dry-run (sizes only)")
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    torch.manual_seed(args.seed)
    meter = Meter(torch, device)
    name = "tiny" if args.tiny else args.preset
    print(f"fclm gpu_smoke: {name} on {device} ({str(dtype).replace('torch.', '')}), grad_ckpt={args.grad_ckpt}")

    # ---------------------------------------------------------------- build
    meter.start()
    if args.tiny:
        model, processor = build_tiny(texts=TEXTS, seed=args.seed)
        model.to(device=device, dtype=dtype)
    else:
        model, processor = random_preset(args.preset, dtype=dtype, device=device)
    meter.stop("build")
    model.config.self_recon_weight = model.config.self_recon_weight or 1.0  # every loss in the step
    model.config.latent_weight = model.config.latent_weight or 1.0
    groups = apply_stage(model, "stage1")
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=2e-5)
    if args.grad_ckpt:  # transformers 5.x renamed it; the old name warns
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    n_ckpt = sum(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())
    model.train()

    image, mask = random_inputs(args.image_size, args.seed)
    batch = encode_batch(processor, image, mask)
    assert "latent_pairs" in batch, "the DL-RES/DLC pair did not produce a latent pair"
    batch = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    batch["sam_pixel_values"] = batch["sam_pixel_values"].to(dtype)
    if "region_crop_pixel_values" in batch:
        batch["region_crop_pixel_values"] = batch["region_crop_pixel_values"].to(dtype)

    # ---------------------------------------------------------------- train
    losses, step_times = {}, []
    for step in range(max(1, args.steps)):
        meter.start()
        out = model(**batch)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(meter.stop(f"train_step_{step}"))
        if step == 0:
            losses = {k: (None if getattr(out, k) is None else float(getattr(out, k).detach().float()))
                      for k in ("loss", "loss_ce", "loss_seg", "loss_dice", "loss_bce", "loss_self", "loss_latent")}
            losses["grad_norm"] = float(grad_norm)
    train_peak = max(v for k, v in meter.peak_gib.items() if k.startswith("train_step"))
    del out, opt
    model.zero_grad(set_to_none=True)
    if args.grad_ckpt:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for k, v in losses.items():
        print(f"  {k:<12} {v}")

    # ---------------------------------------------------------------- inference
    from fclm.infer import FCLMPipeline

    pipe = FCLMPipeline(model, processor)
    fixed = dict(max_new_tokens=args.new_tokens, ignore_eos=True)
    meter.start()
    cap = pipe.describe(image, [mask], **fixed)[0]
    meter.stop("caption")
    meter.start()
    tf = pipe.segment(image, GROUND_USER, teacher_forced=True)
    meter.stop("ground_teacher_forced")
    meter.start()
    gen = pipe.segment(image, GROUND_USER, **fixed)
    meter.stop("ground_generate")
    finite = all(v is not None and math.isfinite(v) for v in losses.values())
    ok = finite and len(tf.masks) == 1 and tuple(tf.masks[0].shape) == (args.image_size, args.image_size)
    return {
        "mode": "tiny" if args.tiny else "full", "model": name, "device": str(device),
        "dtype": str(dtype).replace("torch.", ""), "grad_ckpt": args.grad_ckpt,
        "grad_ckpt_modules": n_ckpt, "batch_size": 2,
        "image_size": args.image_size, "seq_len": int(batch["input_ids"].shape[1]),
        "tokens": int(batch["attention_mask"].sum()), "params_total": n_params,
        "trainable_params": sum(p.numel() for p in params), "trainable_by_group": groups,
        "losses": losses, "losses_finite": finite, "ok": ok,
        "times_s": meter.times | {"train_step": round(step_times[-1], 4), "train_first_step": round(step_times[0], 4)},
        "peak_mem_gib": meter.peak_gib | {"train": train_peak},
        "peak_mem_kind": "cuda.max_memory_allocated per phase" if device.type == "cuda" else "process peak RSS (cumulative)",
        # fixed-length decoding (end-of-turn suppressed): "length" means exactly max_new_tokens were generated
        "caption": {"max_new_tokens": args.new_tokens, "finish_reason": cap.finish_reason, "text": cap.raw[:200]},
        "grounding": {"teacher_forced_masks": len(tf.masks),
                      "teacher_forced_mask_shape": list(tf.masks[0].shape) if tf.masks else None,
                      "generate_max_new_tokens": args.new_tokens,
                      "generate_finish_reason": gen.finish_reason, "generate_masks": len(gen.masks),
                      "generate_text": gen.raw[:200]},
    }


if __name__ == "__main__":
    sys.exit(main())
