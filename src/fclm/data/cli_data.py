"""``fclm data check``: read datasets end to end, report records / objects / skips by reason beside
the official release's published counts, and open every image (truncated files reported)."""
from __future__ import annotations

import json
import os
import sys

from ..cli import CLIError
from ..cli_args import nonnegative_int, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="dataset tools", description="Dataset tools: `fclm data check` reads datasets end to end.")
    sub = p.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("check", help="read datasets and report records, objects and skipped bad records",
                       description=__doc__)
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="loader name (see docs/data.md)")
    src.add_argument("--config", help="training YAML with data.data_root and data.datasets (or data.sources)")
    c.add_argument("--root", help="data root (with --dataset; overrides the config's data_root)")
    c.add_argument("--split", help="split (default: the loader's default)")
    c.add_argument("--json", dest="json_out", help="also write the report as JSON to this file")
    c.add_argument("--show", type=nonnegative_int, default=0, help="write N sample overlays per dataset (PNG)")
    c.add_argument("--out", help="folder for --show overlays")
    c.add_argument("--limit", type=positive_int, default=None, help="read at most this many records per dataset")
    c.add_argument("--no-images", "--no-check-images", dest="no_images", action="store_true",
                   help="do not look at the image files (by default each is opened and decoded in full: "
                        "missing, unreadable and truncated files and wrong sizes are reported)")
    c.set_defaults(func=run_check, check=check_args)


def _datasets_from_config(path: str, root: str | None) -> tuple[str, list[dict]]:
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    data = cfg.get("data", cfg)
    root = root or data.get("data_root")
    if not root:
        raise CLIError(f"{path}: no data.data_root (and no --root)")
    items = data.get("datasets") or data.get("sources") or []
    if not items:
        raise CLIError(f"{path}: no data.datasets (or data.sources) list")
    out = []
    for d in items:
        if d["name"] == "synthetic":
            continue
        opts = dict(d.get("options") or d.get("kwargs") or {})
        if d.get("root"):  # a source's own root, relative to data_root
            opts["_root"] = os.path.join(root, d["root"])
        out.append({"name": d["name"], "split": d.get("split"), **opts})
    return root, out


def _label(sample, i: int, ob) -> str:
    text = ob.category or (ob.expressions[0] if ob.expressions else None) or ob.caption or ""
    return f"[{i}] {text}"


def _show(sample, out_dir: str, k: int) -> str:
    from .masks import box_to_mask, decode_rle
    from .overlay import draw_overlay

    img = sample.image.open()
    masks, labels = [], []
    for i, ob in enumerate(sample.objects[:18]):
        if ob.mask is not None:
            masks.append(decode_rle(ob.mask))
        elif ob.box is not None:
            masks.append(box_to_mask(ob.box, sample.height, sample.width))
        else:
            continue
        labels.append(_label(sample, i, ob))
    title = sample.caption or (sample.questions[0].text if sample.questions else None) or \
        (" | ".join(f"{t.role}: {t.text}" for t in sample.dialogue[:2]) if sample.dialogue else None)
    if img.size != (sample.width, sample.height):
        img = img.resize((sample.width, sample.height))
    path = os.path.join(out_dir, f"{sample.source}_{k:03d}.png")
    draw_overlay(img, masks, labels, title=f"{sample.id}: {title}" if title else sample.id).save(path)
    return path


def _progress(it, name: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc=name, unit="rec", leave=False, disable=not sys.stderr.isatty())


def _check_image(sample, images: dict) -> None:
    """Decode the whole image (a truncated JPEG only fails here) and compare its size to the record's."""
    from PIL import Image

    ref = sample.image
    where = ref.describe()

    def problem(kind: str, text: str) -> None:
        p = images["problems"].setdefault(kind, {"count": 0, "examples": []})
        p["count"] += 1
        if len(p["examples"]) < 10:
            p["examples"].append(text)

    try:
        if ref.array is not None:
            size = (ref.array.shape[1], ref.array.shape[0])
        else:
            import io

            with Image.open(ref.path if ref.path is not None else io.BytesIO(ref.data or b"")) as im:
                im.load()
                size = im.size
                if ref.exif_transpose:  # the loader reads it turned (ReasonSeg, as cv2.imread)
                    from PIL import ImageOps

                    size = ImageOps.exif_transpose(im).size
    except FileNotFoundError:
        problem("missing", where)
        return
    except OSError as e:
        kind = "truncated" if "truncated" in str(e).lower() else "unreadable"
        problem(kind, f"{where}: {e}")
        return
    except Exception as e:  # PIL raises many types for corrupt files
        problem("unreadable", f"{where}: {type(e).__name__}: {e}")
        return
    images["opened"] += 1
    if size != (sample.width, sample.height):
        problem("size differs from the record", f"{where}: {size[0]}x{size[1]}, record says {sample.width}x{sample.height}")


def check_args(args) -> None:
    if args.dataset and not args.root:
        raise CLIError("--dataset needs --root")
    if args.show and not args.out:
        raise CLIError("--show needs --out DIR")
    if args.config and not os.path.isfile(args.config):
        raise FileNotFoundError(f"--config {args.config}: no such file")


def run_check(args) -> int:
    from .formats.expected import expected_counts
    from .formats.registry import load_dataset
    from .schema import FCLMDataError

    if args.dataset:
        root, items = args.root, [{"name": args.dataset, "split": args.split}]
    else:
        root, items = _datasets_from_config(args.config, args.root)
    if args.out:
        os.makedirs(args.out, exist_ok=True)

    report, failed = {"data_root": root, "datasets": []}, 0
    for item in items:
        name, split = item.pop("name"), item.pop("split", None)
        ds_root = item.pop("_root", root)
        entry = {"name": name, "split": split}
        try:
            reader = load_dataset(name, ds_root, split, check_images=not args.no_images, **item)
            entry["split"] = reader.split
            shown, expressions = 0, 0
            images = {"opened": 0, "problems": {}} if not args.no_images else None
            for n, sample in enumerate(_progress(reader, name)):
                expressions += sum(len(o.expressions) for o in sample.objects)
                if images is not None:
                    _check_image(sample, images)
                if shown < args.show:
                    try:
                        entry.setdefault("overlays", []).append(_show(sample, args.out, shown))
                    except FCLMDataError as e:
                        print(f"  {name}: cannot draw {sample.id}: {e}", file=sys.stderr)
                    shown += 1
                if args.limit is not None and n + 1 >= args.limit:
                    break
            entry.update(reader.stats.to_dict())
            entry["expressions"] = expressions
            if images is not None:
                entry["images"] = images
            entry["expected"] = expected_counts(name, entry["split"])
        except (FileNotFoundError, FCLMDataError, ValueError) as e:
            entry["error"] = str(e)
            failed += 1
        report["datasets"].append(entry)
        _print_entry(entry)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if failed else 0


def _print_entry(e: dict) -> None:
    head = f"{e['name']} [{e.get('split')}]"
    if "error" in e:
        print(f"{head}: ERROR {e['error']}")
        return
    exp = e.get("expected") or {}

    def num(key: str, label: str) -> str:
        s = f"{e.get(key, 0)} {label}"
        if key in exp:
            s += f" (official {exp[key]:,}{'' if exp[key] == e.get(key) else ' DIFFERENT'})"
        return s

    parts = [num("records", "records"), num("objects", "objects")]
    if e.get("expressions") or "expressions" in exp:
        parts.append(num("expressions", "expressions"))
    print(f"{head}: {', '.join(parts)}, {sum(e['skipped'].values())} skipped records")
    for reason, n in e["skipped"].items():
        print(f"    skipped record  {n:>8}  {reason}")
    for reason, n in e["skipped_objects"].items():
        print(f"    skipped object  {n:>8}  {reason}")
    for remark, n in (e.get("notes") or {}).items():
        print(f"    kept            {n:>8}  {remark}")
    if "images" in e:
        im = e["images"]
        print(f"    images opened   {im['opened']:>8}")
        for kind, p in im["problems"].items():
            print(f"    image {kind}  {p['count']}  e.g. {p['examples'][0]}")
    for p in e.get("overlays", []):
        print(f"    overlay {p}")
