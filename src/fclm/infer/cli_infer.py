"""`fclm describe | classify | segment | ground`: inference from the command line."""
from __future__ import annotations

import argparse
import json
import sys

from ..cli import CLIError
from ..cli_args import add_progress_flag, check_device, check_model_dir, device_arg, positive_int

REGIONS = """Regions are given in order with --mask FILE (a mask image: see docs/inference.md for which
pixels count, or a .json file holding a COCO RLE dict, a polygon or a box) and --box X0 Y0 X1 Y1
(the filled rectangle; pixels, x1/y1 exclusive)."""
JSON = "--json prints the results as one JSON object, masks as COCO RLE."

DESCRIPTIONS = {
    "describe": f"Describe each region of an image (one detailed localized caption per region).\n\n{REGIONS}\n{JSON}",
    "classify": f"Name the category of each region of an image.\n\n{REGIONS}\n{JSON}",
    "segment": "Segment what TEXT refers to: one mask per [SEG] the model writes. TEXT may hold <region>\n"
               f"slots, filled in order by the regions.\n\n{REGIONS}\n{JSON} It keeps the query (\"query\")\n"
               "and the model's answer (\"answer\").",
    "ground": f"Grounded caption (GCG): a caption whose phrases each get a mask. Takes no regions.\n{JSON}",
}
EXAMPLES = {
    "describe": ["fclm describe photo.jpg --mask dog.png --box 10 20 200 240", "fclm describe photo.jpg --mask dog.png --brief --out dog_desc.png"],
    "classify": ["fclm classify photo.jpg --mask dog.png --mask cat.png --json"],
    "segment": ['fclm segment photo.jpg "the dog on the left" --out dog.png',
                'fclm segment photo.jpg "the dog on the left" --teacher-forced --json',
                'fclm segment photo.jpg "Which object has the same colour as <region>?" --mask ball.png'],
    "ground": ["fclm ground photo.jpg --out gcg.png", "fclm ground photo.jpg --json"],
}


class _RegionAction(argparse.Action):
    """Collect --mask / --box into one ordered list of regions."""

    def __call__(self, parser, namespace, values, option_string=None):
        regions = list(getattr(namespace, "regions", None) or [])
        if option_string == "--box":
            regions.append([float(v) for v in values])
        else:
            regions.append(values)
        namespace.regions = regions


def _parser(sub, name: str, help_: str, regions: bool) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=DESCRIPTIONS[name], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]))
    p.add_argument("image", help="image file")
    if regions:
        p.add_argument("--mask", action=_RegionAction, dest="regions", metavar="FILE",
                       help="region mask: an image (see docs/inference.md) or .json (RLE / polygon / box); repeatable")
        p.add_argument("--box", action=_RegionAction, dest="regions", nargs=4, type=float,
                       metavar=("X0", "Y0", "X1", "Y1"), help="region box in pixels (becomes a rectangle mask); repeatable")
    p.add_argument("--model", metavar="DIR", help="FCLM model folder (default: ./fclm-quickstart/model)")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--max-new-tokens", type=positive_int, metavar="N", help="tokens to generate at most (>= 1)")
    p.add_argument("--json", action="store_true", help="print JSON (masks as COCO RLE)")
    p.add_argument("--out", metavar="PNG", help="save an overlay picture here")
    add_progress_flag(p)
    p.set_defaults(regions=[], check=_check)
    return p


def register(sub) -> None:
    p = _parser(sub, "describe", "describe image regions (detailed localized captions)", regions=True)
    p.add_argument("--brief", action="store_true", help="a short description instead of a detailed one")
    p.set_defaults(func=run_describe)

    p = _parser(sub, "classify", "name the category of image regions", regions=True)
    p.set_defaults(func=run_classify)

    p = _parser(sub, "segment", "segment what a text refers to (one mask per [SEG])", regions=True)
    p.add_argument("text", help="referring expression, question or caption; may hold <region> slots")
    p.add_argument("--teacher-forced", action="store_true",
                   help="fast RES protocol: one forward with the answer 'Sure, [SEG].' (no generation)")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "raw", "res", "reason", "dlres"],
                   help="how TEXT becomes the prompt (default: auto)")
    p.set_defaults(func=run_segment)

    p = _parser(sub, "ground", "grounded caption: phrases with one mask each (GCG)", regions=False)
    p.set_defaults(func=run_ground)


def _check(args) -> None:
    """Before torch: the image and model folder exist, regions where they are needed."""
    import os

    if not os.path.exists(args.image):
        raise FileNotFoundError(f"image not found: {args.image}")
    if os.path.isdir(args.image):
        raise CLIError(f"image {args.image} is a folder, not an image file")
    if args.command in ("describe", "classify") and not args.regions:
        raise CLIError(f"give at least one region with --mask FILE or --box X0 Y0 X1 Y1 (see fclm {args.command} -h)")
    if args.model:
        check_model_dir(args.model)
    if args.command == "segment" and not args.text.strip():
        raise CLIError("TEXT is empty")


# ------------------------------------------------------------------ runners
def _pipeline(args):
    from .pipeline import FCLMPipeline, default_model_dir

    check_device(args.device)
    return FCLMPipeline.from_pretrained(args.model or default_model_dir(), device=args.device, dtype=args.dtype)


def _guard(fn):
    """Turn out-of-memory and similar runtime failures into one clear line."""
    def wrapped(args):
        import torch

        from ..data.schema import FCLMDataError

        try:
            return fn(args)
        except torch.OutOfMemoryError as e:
            raise FCLMDataError(f"out of device memory ({e}); try --device cpu, a smaller --max-new-tokens or fewer regions") from e
    return wrapped


def _load(args):
    """Image and regions, read (and checked) before the model loads."""
    from .inputs import load_image, load_regions

    img = load_image(args.image)
    masks = load_regions(args.regions, img.size[1], img.size[0]) if args.regions else []
    return img, masks


def _save(args, img, result, regions=()) -> None:
    if getattr(args, "out", None):
        from .visualize import save_overlay

        save_overlay(args.out, img, result, regions)
        if not args.json:
            print(f"overlay saved to {args.out}")


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")


def _run_regions(args, task: str) -> int:
    """`describe` / `classify`: one text per region, printed or as JSON, optional overlay."""
    img, masks = _load(args)
    pipe = _pipeline(args)
    if task == "describe":
        res = pipe.describe(img, masks, detailed=not args.brief, max_new_tokens=args.max_new_tokens)
        extra = {}
    else:
        res = pipe.classify_many([(img, masks)], max_new_tokens=args.max_new_tokens)[0]
        extra = {"labels": [r.text for r in res]}
    if args.json:
        _print_json({"image": args.image, "task": task, "image_size": [img.size[1], img.size[0]], **extra,
                     "regions": [r.to_dict() for r in res]})
    else:
        for r in res:
            print(f"region {r.region + 1}: {r.text}")
    _save(args, img, res, masks)
    return 0


@_guard
def run_describe(args) -> int:
    return _run_regions(args, "describe")


@_guard
def run_classify(args) -> int:
    return _run_regions(args, "classify")


@_guard
def run_segment(args) -> int:
    img, masks = _load(args)
    pipe = _pipeline(args)
    res = pipe.segment(img, args.text, regions=masks or None, teacher_forced=args.teacher_forced,
                       prompt_style=args.prompt_style, max_new_tokens=args.max_new_tokens)
    if args.json:
        d = res.to_dict()
        d["answer"] = d.pop("text")  # the query stays under "query"
        _print_json({"image": args.image, "task": "segment", "query": args.text, **d})
    else:
        print(f"answer: {res.raw}")
        for i, m in enumerate(res.masks):
            print(f"mask {i + 1}: {int(m.sum())} pixels of {m.shape[1]}x{m.shape[0]}")
        if not res.masks:
            print("no [SEG] token was generated: no mask")
    _save(args, img, res, masks)
    return 0


@_guard
def run_ground(args) -> int:
    img, _ = _load(args)
    pipe = _pipeline(args)
    res = pipe.ground(img, max_new_tokens=args.max_new_tokens)
    if args.json:
        _print_json({"image": args.image, "task": "ground", **res.to_dict()})
    else:
        print(f"caption: {res.caption}")
        for i, p in enumerate(res.phrases):
            px = f"{int(p.mask.sum())} pixels" if p.mask is not None else "no mask"
            print(f"phrase {i + 1}: {p.text!r} ({px})")
    _save(args, img, res)
    return 0
