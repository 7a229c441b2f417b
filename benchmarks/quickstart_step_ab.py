"""Per-step time of quickstart stage 1 under each speed lever, A/B interleaved in one process.

    python benchmarks/quickstart_step_ab.py --rounds 4 --steps 5
    python benchmarks/quickstart_step_ab.py --profile 20     # torch.profiler table of the default step
    python benchmarks/quickstart_step_ab.py --parts 30       # wall time of the model's parts per step

One Trainer on ``configs/train/quickstart-stage1.yaml``; each round runs ``--steps`` training steps
under every variant in turn (variants set FCLMConfig fields on the live model), so a loaded or
noisy machine slows every variant alike. Prints the median wall and process-CPU seconds per step of
each variant and their ratios to the default; on a shared machine run it with ``--threads 1``, where
CPU time measures the work and not the waiting. Variants: ``--variant NAME:field=value,field=value`` (repeatable).
"""
from __future__ import annotations

import argparse
import statistics
import time

DEFAULT_VARIANTS = {
    "default": {},
    "low-res mask loss": {"mask_loss_at_low_res": True},
    "L_self ≤ 16 objects": {"self_recon_max_masks": 16},
    "low-res + L_self ≤ 16": {"mask_loss_at_low_res": True, "self_recon_max_masks": 16},
}


def _parse_variant(text: str) -> tuple[str, dict]:
    import yaml

    name, _, body = text.partition(":")
    fields = {}
    for item in filter(None, body.split(",")):
        k, _, v = item.partition("=")
        fields[k.strip()] = yaml.safe_load(v)
    return name, fields


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[], help="NAME:field=value,... (FCLMConfig fields)")
    ap.add_argument("--set", action="append", default=[], help="training-config override, e.g. per_device_batch=8")
    ap.add_argument("--profile", type=int, default=0, help="instead: profile this many default steps")
    ap.add_argument("--parts", type=int, default=0, help="instead: time the model's parts over this many default steps")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--out", default="/tmp/fclm-qs-ab")
    args = ap.parse_args(argv)

    import torch

    from fclm.train.config import load_train_config
    from fclm.train.quickstart import packaged_config
    from fclm.train.trainer import Trainer

    cfg = load_train_config(packaged_config("quickstart-stage1.yaml"),
                            [f"output_dir={args.out}", "steps=100000", *args.set])
    if args.threads:
        torch.set_num_threads(args.threads)
    tr = Trainer(cfg, progress=False)
    model = tr.unwrapped
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}")
    batches = iter(tr.batches())
    step = 0
    for _ in range(args.warmup):
        tr.train_step(batches)
        step += 1
    if args.profile:
        from torch.profiler import ProfilerActivity, profile, record_function

        data_t = 0.0
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile):
                t = time.perf_counter()
                with record_function("data"):
                    tr.stream.micro_batch(step, 0, 0, 1)
                data_t += time.perf_counter() - t
                tr.train_step(batches)
                step += 1
        wall = time.perf_counter() - t0
        print(f"{args.profile} steps in {wall:.1f} s (profiled; data built twice per step, once inside "
              f"'data': {data_t / args.profile:.3f} s/step)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return

    if args.parts:
        _time_parts(tr, batches, args.parts)
        return

    variants = dict(DEFAULT_VARIANTS) if not args.variant else {"default": {}}
    variants.update(_parse_variant(v) for v in args.variant)
    fields = {k for v in variants.values() for k in v if k != "threads"}
    base = {k: getattr(model.config, k) for k in fields}
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {n: [] for n in variants}
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(args.rounds):
        for name, over in variants.items():
            for k in fields:
                setattr(model.config, k, over.get(k, base[k]))
            torch.set_num_threads(over.get("threads", threads))  # pseudo-field: torch intra-op threads
            for _ in range(args.steps):
                t, c = time.perf_counter(), time.process_time()
                tr.train_step(batches)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                step += 1
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {statistics.median(v[-args.steps:]):.3f}" for n, v in times.items()), flush=True)
    ref, cref = statistics.median(times["default"]), statistics.median(cpu["default"])
    n = args.rounds * args.steps
    print(f"\n| variant | wall s/step (median of {n}) | vs default | CPU s/step (median) | vs default |\n"
          "|---|---|---|---|---|")
    for name, v in times.items():
        m, c = statistics.median(v), statistics.median(cpu[name])
        print(f"| {name} | {m:.3f} | {m / ref:.2f}× | {c:.3f} | {c / cref:.2f}× |")


def _time_parts(tr, batches, steps: int) -> None:
    """Wall seconds per step spent in each part of the model (forward only, except the backward,
    optimizer and clipping rows); the parts nest inside "forward", so they do not add up to 100 %."""
    import functools

    import fclm.model.modeling_fclm as modeling

    spent: dict[str, float] = {}

    def timed(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
        setattr(owner, attr, wrapper)

    m = tr.unwrapped
    for owner, attr, label in ((m, "forward", "forward"), (tr.accelerator, "backward", "backward"),
                               (tr.optimizer, "step", "optimizer step"), (tr.accelerator, "clip_grad_norm_", "grad clip"),
                               (modeling, "decode_masks", "SAM mask decoder"), (modeling, "mask_losses", "mask losses"),
                               (modeling, "sam_image_embeddings", "SAM image encoder"), (m, "encode_images", "vision encoder"),
                               (m, "run_language_model", "LLM"), (m.region_extractor, "forward", "region extractor"),
                               (m.region_extractor, "encode_position", "position branch")):
        timed(owner, attr, label)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step(batches)
    wall = time.perf_counter() - t0
    print(f"{steps} steps: {wall / steps:.3f} s/step\n\n| part | ms/step | share of a step |\n|---|---|---|")
    for label, v in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {1000 * v / steps:.1f} | {100 * v / wall:.1f} % |")


if __name__ == "__main__":
    main()
