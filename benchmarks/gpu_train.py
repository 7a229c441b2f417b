"""Training throughput of the real trainer: random-weight FCLM-3B, bf16 autocast, fp32 master weights.

    python benchmarks/gpu_train.py --out gpu_train.json                 # one GPU: ddp + fsdp × stage 1 + 2
    python benchmarks/gpu_train.py --cases fsdp:stage1 --steps 8        # one case
    python benchmarks/gpu_train.py --tiny --out tiny.json               # tiny model on the CPU (what the test runs)

Each case runs ``fclm.train.trainer.Trainer`` in its own process (``fsdp`` under ``accelerate
launch --config_file configs/accelerate/fsdp.yaml``), on synthetic scenes at real sizes (1024-px
images: ≈ 1.4k tokens per sample, SAM at 1024), per-device batch 4 (stage 1: RES / DL-RES / ROC /
DLC / GCG mixture; LLM, region extractor, projector, SAM decoder train; gradient checkpointing) or
2 (stage 2: DLC + DL-RES pairs, LLM only). The DataLoader's workers build the batches.
After ``--warmup`` steps it times ``--steps`` optimizer steps (``torch.cuda.synchronize``) and reports
tokens/s (attention-masked tokens), data-wait share (time blocked on the DataLoader / step time),
peak memory (``torch.cuda.max_memory_allocated``) and MFU:

    model FLOPs = 6 · (trainable non-embedding LLM params) · tokens      (forward + backward)
                + 2 · (frozen LLM params) · tokens                       (stage 2 has none)
                + 2 · (vision encoder params) · 4 · image tokens         (frozen; patches before the 2×2 merge)
                + 2 · (SAM image encoder params) · 4096 · SAM images     (frozen, when SAM runs)
                + 6 · d · V · label tokens                               (LM head at label positions)

attention and gradient-checkpointing recompute excluded; MFU = FLOPs / (time · ``--peak-tflops``,
989 for H100/H200 SXM bf16 dense). One ``SUMMARY {json}`` line; ``--out`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 2 ** 30
STAGE1_TASKS = [{"name": "synthetic", "tasks": ["res", "dlres"], "weight": 2},
                {"name": "synthetic", "tasks": ["roc", "dlc"], "weight": 1},
                {"name": "synthetic", "tasks": ["gcg"], "weight": 1}]
STAGE2_TASKS = [{"name": "synthetic", "tasks": ["pair_stage2"], "weight": 1}]


def train_config(stage: str, tiny: bool, out_dir: str, steps: int, workers: int | None) -> dict:
    size = 128 if tiny else 1024
    model = {"init": "tiny"} if tiny else {"init": "preset", "preset": "fclm-3b", "gradient_checkpointing": True}
    if stage == "stage1":
        model["overrides"] = {"self_recon_weight": 1.0, "latent_weight": 0.0, "max_masks_per_sample": 5}
        extra = {"per_device_batch": 2 if tiny else 4}
        data = {"sources": STAGE1_TASKS}
    else:
        model["overrides"] = {"self_recon_weight": 0.0, "latent_weight": 1.0, "latent_scope": "pairs"}
        extra = {"per_device_batch": 2}
        data = {"sources": STAGE2_TASKS, "pair_stage2": True}
    data["synthetic"] = {"num_scenes": 1000, "seed": 0, "image_size": size}
    data["num_workers"] = workers
    return {"stage": stage, "output_dir": out_dir, "model": model, "data": data,
            "optim": {"lr": 2.0e-5, "warmup_steps": 1, "schedule": "constant"},
            "steps": steps, "save_every": 10 ** 6, "precision": "no" if tiny else "bf16", "seed": 0, **extra}


class TimedBatches:
    """The DataLoader iterator, timing how long the training loop waits for each micro-batch."""

    def __init__(self, it):
        self.it, self.wait, self.tokens, self.label_tokens, self.images, self.sam_images = it, 0.0, 0, 0, 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        b = next(self.it)
        self.wait += time.perf_counter() - t
        self.tokens += int(b["attention_mask"].sum())
        self.label_tokens += int((b["labels"][:, 1:] != -100).sum())
        grid = b["image_grid_thw"]
        if b.get("image_index") is not None:  # rows sharing an image: its patches are encoded once
            idx = b["image_index"].tolist()
            grid = grid[[idx.index(u) for u in range(max(idx) + 1)]]
        self.images += int(grid.prod(-1).sum())  # patches before the merge
        # distinct images carried; SAM encodes those with a row that needs it (here: all of them —
        # stage 1's rows all have a [SEG] or an L_self region, stage 2's pairs a DL-RES row)
        self.sam_images += int(b["sam_pixel_values"].shape[0]) if b.get("sam_pixel_values") is not None else 0
        return b


def flop_counts(model) -> dict:
    lm = model.model.language_model
    emb = {id(p) for p in lm.embed_tokens.parameters()}
    llm_train = sum(p.numel() for p in lm.parameters() if p.requires_grad and id(p) not in emb)
    llm_frozen = sum(p.numel() for p in lm.parameters() if not p.requires_grad and id(p) not in emb)
    return {"llm_train": llm_train, "llm_frozen": llm_frozen,
            "vision": sum(p.numel() for p in model.model.visual.parameters()),
            "sam_encoder": sum(p.numel() for p in model.sam.vision_encoder.parameters()),
            "head": model.config.text_config.hidden_size * model.config.text_config.vocab_size}


def run_case(args) -> dict:
    """One case inside this process (the worker side)."""
    import torch
    import yaml

    from fclm.train.config import load_train_config
    from fclm.train.trainer import Trainer

    strategy, stage = args.case.split(":")
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(train_config(stage, args.tiny, os.path.join(tmp, "out"), steps, args.workers), f)
        cfg = load_train_config(path)
        t0 = time.perf_counter()
        tr = Trainer(cfg, progress=False)
        build_s = time.perf_counter() - t0
        if tr.strategy != strategy:
            raise SystemExit(f"case {args.case} ran under {tr.strategy}: launch it with the {strategy} config")
        c = flop_counts(tr.unwrapped)
        cuda = tr.accelerator.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        b = TimedBatches(iter(tr.batches()))
        losses = []
        for step in range(steps):
            if step == args.warmup:
                sync()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                b.wait, b.tokens, b.label_tokens, b.images, b.sam_images = 0.0, 0, 0, 0, 0
                t_start = time.perf_counter()
            losses.append(tr.train_step(b)["loss"])
        sync()
        elapsed = time.perf_counter() - t_start
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
        world = tr.accelerator.num_processes
    flops = ((6 * c["llm_train"] + 2 * c["llm_frozen"]) * b.tokens + 2 * c["vision"] * b.images
             + 2 * c["sam_encoder"] * 4096 * b.sam_images + 6 * c["head"] * b.label_tokens) * world
    return {"case": args.case, "strategy": strategy, "stage": stage, "processes": world, "steps": args.steps,
            "build_s": round(build_s, 1), "step_s": round(elapsed / args.steps, 4),
            "tokens_per_s": round(b.tokens * world / elapsed, 1), "data_wait_share": round(b.wait / elapsed, 4),
            "peak_mem_gib": None if peak is None else round(peak, 2),
            "model_tflops_per_step": round(flops / args.steps / 1e12, 4),
            "mfu": round(flops / elapsed / (args.peak_tflops * 1e12 * world), 4) if cuda else None,
            "tokens_per_sample": round(b.tokens / max(1, args.steps * cfg.per_device_batch * cfg.grad_accum), 1),
            "num_workers": tr.num_workers, "losses": [round(x, 4) for x in losses], "params": c}


def launch(case: str, args, out_json: str) -> list[str]:
    strategy = case.split(":")[0]
    worker = [os.path.abspath(__file__), "--case", case, "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--peak-tflops", str(args.peak_tflops), "--case-out", out_json] + (["--tiny"] if args.tiny else [])
    if args.workers is not None:
        worker += ["--workers", str(args.workers)]
    if strategy == "ddp":
        return [sys.executable, *worker]  # one process: plain (DDP needs none on one GPU)
    from fclm.train.strategies import accelerate_config

    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config(strategy),
            "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no" if args.tiny else "bf16",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *worker]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model, 128-px scenes, CPU")
    ap.add_argument("--cases", default="ddp:stage1,fsdp:stage1,ddp:stage2,fsdp:stage2")
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 6; tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; tiny 1)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the trainer's)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100/H200 SXM: 989)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per case")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--case-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.tiny else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    if args.case:  # worker
        res = run_case(args)
        if int(os.environ.get("RANK", "0")) == 0:
            with open(args.case_out, "w") as f:
                json.dump(res, f)
        return 0
    import torch

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    results, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            out_json = os.path.join(tmp, case.replace(":", "_") + ".json")
            t = time.time()
            proc = subprocess.run(launch(case, args, out_json), env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
            if proc.returncode != 0 or not os.path.exists(out_json):
                tail = (proc.stdout + proc.stderr)[-2500:]
                results.append({"case": case, "ok": False, "error": tail})
                print(f"{case}: FAILED\n{tail}", file=sys.stderr)
                continue
            with open(out_json) as f:
                r = json.load(f)
            r.update(ok=True, wall_s=round(time.time() - t, 1))
            results.append(r)
            mfu = "" if r["mfu"] is None else f", MFU {100 * r['mfu']:.1f} %"
            mem = "" if r["peak_mem_gib"] is None else f", peak {r['peak_mem_gib']:.1f} GiB"
            print(f"{case}: {r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s ({r['tokens_per_sample']:.0f} "
                  f"tokens/sample), data wait {100 * r['data_wait_share']:.1f} %{mem}{mfu}", flush=True)
    summary = {"model": "tiny" if args.tiny else "fclm-3b (random weights)", "tiny": args.tiny,
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else platform.processor() or "cpu",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "total_s": round(time.time() - t0, 1), "results": results,
               "ok": all(r.get("ok") for r in results)}
    print("SUMMARY " + json.dumps(summary))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
