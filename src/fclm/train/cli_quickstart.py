"""`fclm quickstart [--out DIR]`: train and evaluate a tiny FCLM on synthetic scenes (CPU, no download)."""
from __future__ import annotations

# Keep this figure what docs/benchmarks.md ("`fclm quickstart`" sections) supports.
TIME = ("about 17 min on an idle 2-core machine (1,020 s measured on 2026-12-02, 0.425 s per stage-1 "
        "step): see docs/benchmarks.md")
HELP = f"train + evaluate a tiny FCLM on synthetic scenes (CPU; {TIME})"


def register(sub) -> None:
    p = sub.add_parser("quickstart", help=HELP, description=f"{__doc__.strip()} Time: {TIME}.")
    p.add_argument("--out", default="fclm-quickstart", help="output folder (default: ./fclm-quickstart)")
    p.add_argument("--stage1-steps", type=int,
                   help="stage-1 steps, at least 1 (default: the packaged config's)")
    p.add_argument("--stage2-steps", type=int, help="stage-2 steps; 0 skips stage 2 (default: the packaged config's)")
    p.add_argument("--test-scenes", type=int, default=60, help="held-out test scenes to evaluate on (default: 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablate", action="store_true",
                   help="instead: train with/without L_self and L_latent for every --seeds seed and write "
                        "the mean ± std table and a plot to OUT/ablation")
    p.add_argument("--seeds", default="0,1,2", help="--ablate: comma-separated seeds (default: 0,1,2)")
    p.add_argument("--jobs", type=int, default=2, help="--ablate: runs at a time, one thread each (default: 2)")
    p.add_argument("--reuse-full", default="", metavar="DIRS",
                   help="--ablate: comma-separated finished quickstart output folders (from --seed N) to count as the "
                        "full variant's row of seed N instead of training it again (checked against the recipe)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _check(args) -> str | None:
    """The first invalid argument, as an error message."""
    if args.stage1_steps is not None and args.stage1_steps < 1:
        return (f"--stage1-steps must be at least 1, got {args.stage1_steps} "
                "(stage 2 starts from the stage-1 model; omit the option for the default)")
    if args.stage2_steps is not None and args.stage2_steps < 0:
        return f"--stage2-steps must be at least 0, got {args.stage2_steps}"
    if args.test_scenes < 1:
        return f"--test-scenes must be at least 1, got {args.test_scenes}"
    if args.ablate:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            return f"--seeds must be comma-separated integers, got {args.seeds!r}"
        if not seeds or len(set(seeds)) != len(seeds):
            return f"--seeds must name at least one seed, each once, got {args.seeds!r}"
        if args.jobs < 1:
            return f"--jobs must be at least 1, got {args.jobs}"
    return None


def run(args) -> int:
    import logging
    import os
    import sys

    err = _check(args)
    if err:
        print(f"fclm quickstart: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    if args.ablate:
        from .ablation import run_ablation

        out = os.path.join(args.out, "ablation")
        try:
            table = run_ablation(out, args.stage1_steps, args.stage2_steps, args.test_scenes,
                                 seeds=[int(x) for x in args.seeds.split(",") if x.strip()], jobs=args.jobs,
                                 progress=not args.no_progress,
                                 reuse=[d.strip() for d in args.reuse_full.split(",") if d.strip()])
        except ValueError as e:  # e.g. a --reuse-full folder that is not the full variant (checked before training)
            print(f"fclm quickstart: error: {e}", file=sys.stderr)
            return 2
        print(table)
        print(f"\ntable + plot: {os.path.join(out, 'ablation.md')}, {os.path.join(out, 'ablation.png')}")
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
