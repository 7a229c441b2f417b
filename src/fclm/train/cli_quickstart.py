"""`fclm quickstart [--out DIR]`: train and evaluate a tiny FCLM on synthetic scenes (CPU, no download)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="train + evaluate a tiny FCLM on synthetic scenes (CPU, ~15 min)",
                       description=__doc__)
    p.add_argument("--out", default="fclm-quickstart", help="output folder (default: ./fclm-quickstart)")
    p.add_argument("--stage1-steps", type=int, help="override stage-1 steps (default: the packaged config)")
    p.add_argument("--stage2-steps", type=int, help="override stage-2 steps")
    p.add_argument("--test-scenes", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablate", action="store_true",
                   help="instead: train with/without L_self and L_latent on the same seeds and write the table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    import os

    logging.basicConfig(level=logging.WARNING)
    if args.ablate:
        from .ablation import run_ablation

        table = run_ablation(os.path.join(args.out, "ablation"), args.stage1_steps, args.stage2_steps,
                             args.test_scenes, args.seed, progress=not args.no_progress)
        print(table)
        return 0
    from .quickstart import run_quickstart

    r = run_quickstart(args.out, args.stage1_steps, args.stage2_steps, args.test_scenes, args.seed,
                       progress=not args.no_progress)
    for task, m in r["metrics"].items():
        vals = ", ".join(f"{k} {v:.1f}" for k, v in m["metrics"].items())
        print(f"{task:<10} {vals}   (baseline: {', '.join(f'{k} {v:.1f}' for k, v in m['baseline']['metrics'].items())})")
    out = args.out
    print(f"\nmodel:        {r['model']}")
    print(f"metrics:      {os.path.join(out, 'metrics.json')}")
    print(f"report:       {os.path.join(out, 'report.md')} (overlays in {os.path.join(out, 'overlays')})")
    print(f"loss curves:  {os.path.join(out, 'loss_curves.png')}")
    print(f"total time:   {r['timings_s']['total']:.0f} s")
    print(f"try:          fclm segment IMAGE \"the red circle\" --model {r['model']}")
    return 0
