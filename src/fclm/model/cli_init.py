"""`fclm init`: compose an FCLM checkpoint (real parts, tiny random, or a full-size dry run)."""
from __future__ import annotations

import argparse
import os

from ..cli import CLIError
from ..cli_args import add_progress_flag, check_pretrained_source


def register(sub) -> None:
    p = sub.add_parser("init", help="build an FCLM model folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  fclm init --llm Qwen/Qwen2.5-VL-3B-Instruct --sam facebook/sam-vit-huge --out fclm-3b-init\n"
                              "  fclm init --llm Qwen/Qwen2.5-VL-3B-Instruct --sam sam_vit_h_4b8939.pth --out fclm-3b-init\n"
                              "  fclm init --tiny --out tiny-fclm\n"
                              "  fclm init --preset fclm-3b --random --dry-run")
    p.add_argument("--llm", help="Qwen2.5-VL hub id or folder")
    p.add_argument("--sam", help="SAM hub id, folder, or original segment-anything .pth")
    p.add_argument("--tiny", action="store_true", help="tiny random model for tests and the quickstart")
    p.add_argument("--preset", choices=["fclm-3b", "fclm-7b"], help="full-size architecture")
    p.add_argument("--random", action="store_true", help="with --preset: random weights (no download)")
    p.add_argument("--dry-run", action="store_true", help="with --preset: build on the meta device, print parameter counts")
    p.add_argument("--out", help="output folder")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    add_progress_flag(p)
    p.set_defaults(func=run, check=check)


def _print_counts(name: str, counts: dict[str, int]) -> None:
    qwen = counts["vision_encoder"] + counts["llm"]
    sam = counts["sam_image_encoder"] + counts["mask_decoder"]
    new = counts["region_extractor"] + counts["seg_projector"]
    print(f"{name}: parameters per component")
    for k, v in counts.items():
        print(f"  {k:<20} {v / 1e6:>12,.2f} M")
    print(f"  {'Qwen2.5-VL part':<20} {qwen / 1e9:>12.3f} B   (vision encoder + LLM)")
    print(f"  {'SAM part':<20} {sam / 1e9:>12.3f} B   (image encoder + prompt encoder/mask decoder)")
    print(f"  {'new FCLM modules':<20} {new / 1e6:>12,.2f} M   (region extractor + seg projector)")
    print(f"  {'total':<20} {sum(counts.values()) / 1e9:>12.3f} B")


def check(args) -> None:
    """Which build was asked for, with what it needs — before torch is imported."""
    modes = [m for m, on in (("--tiny", args.tiny), ("--preset", args.preset), ("--llm/--sam", args.llm or args.sam)) if on]
    if len(modes) > 1:
        raise CLIError(f"choose one of --tiny, --preset, --llm/--sam (got {' and '.join(modes)})")
    if not modes:
        raise CLIError("give --tiny, --llm and --sam, or --preset")
    if (args.random or args.dry_run) and not args.preset:
        raise CLIError("--random and --dry-run go with --preset")
    if args.preset:
        if not (args.random or args.dry_run):
            raise CLIError("--preset needs --random (random weights) and/or --dry-run; for real weights use --llm/--sam")
        if args.random and not args.dry_run and not args.out:
            raise CLIError("--preset --random needs --out DIR")
        return
    if args.llm or args.sam:
        if not (args.llm and args.sam):
            raise CLIError(f"--llm and --sam go together (missing {'--sam' if args.llm else '--llm'})")
        check_pretrained_source(args.llm, "--llm")
        check_pretrained_source(args.sam, "--sam")
    if not args.out:
        raise CLIError(f"{modes[0]} needs --out DIR")
    if os.path.isfile(args.out):
        raise CLIError(f"--out {args.out} is a file; give a folder")


def run(args) -> int:
    import torch

    from .builders import build_from_pretrained, build_tiny, dry_run, save_fclm

    if args.preset:
        if args.dry_run:
            _print_counts(args.preset, dry_run(args.preset))
            return 0
        from .builders import random_preset

        model, proc = random_preset(args.preset, dtype=getattr(torch, args.dtype))
        save_fclm(model, proc, args.out)
    elif args.tiny:
        build_tiny(args.out, seed=args.seed)
    else:
        model, proc = build_from_pretrained(args.llm, args.sam, dtype=getattr(torch, args.dtype))
        save_fclm(model, proc, args.out)
    print(f"saved FCLM to {args.out}")
    return 0
