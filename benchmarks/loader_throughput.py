"""Loader throughput: decode image + masks of a generated DAM-style WebDataset shard.

    .venv/bin/python benchmarks/loader_throughput.py [--samples 2000] [--regions 3]

Writes one tar shard (``NNNNNN.jpg`` ~640x480 + ``NNNNNN.pickle`` holding a list of region dicts
with COCO-RLE ``mask_rle``, ``ann_id``, ``img_id``, ``caption``) to a temporary folder, then
reads it through ``load_dataset("dam_sa1b", ...)`` — streaming, and map-style through the lazily
built shard index — opening every image (full JPEG decode to RGB) and decoding every mask.
Reports samples/s for each pass (target: >= 200 samples/s on the 2-core machine).
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

from fclm.data.formats.registry import load_dataset
from fclm.data.masks import decode_rle, encode_mask

W, H = 640, 480


def make_shard(path: str, n: int, regions: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) * 255 // (W + H)], -1).astype(np.uint8)
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            img = base.copy()
            img[rng.integers(0, H, 200), rng.integers(0, W, 200)] = 255  # some texture
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            regs = []
            for k in range(regions):
                cx, cy = rng.integers(50, W - 50), rng.integers(50, H - 50)
                rx, ry = rng.integers(10, 120), rng.integers(10, 120)
                m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
                regs.append({"mask_rle": encode_mask(m), "ann_id": i * 10 + k, "img_id": i,
                             "caption": "A detailed description of the region, several sentences long."})
            for name, data in ((f"{i:06d}.jpg", buf.getvalue()), (f"{i:06d}.pickle", pickle.dumps(regs))):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def consume(sample) -> int:
    sample.image.open().load()
    return sum(int(decode_rle(o.mask).any()) for o in sample.objects)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--regions", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "describe_anything", "SAM", "images")
        os.makedirs(d)
        shard = os.path.join(d, "00000000.tar")
        t = time.perf_counter()
        make_shard(shard, args.samples, args.regions)
        print(f"generated {args.samples} samples ({os.path.getsize(shard) / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t:.1f} s")

        reader = load_dataset("dam_sa1b", tmp)
        t = time.perf_counter()
        n = sum(1 for s in reader if consume(s) >= 0)
        dt = time.perf_counter() - t
        print(f"stream:     {n} samples, {reader.stats.objects} masks in {dt:.2f} s = {n / dt:.0f} samples/s")

        reader = load_dataset("dam_sa1b", tmp)
        t = time.perf_counter()
        m = len(reader)
        t_index = time.perf_counter() - t
        order = np.random.default_rng(0).permutation(m)
        t = time.perf_counter()
        k = sum(1 for i in order if consume(reader[int(i)]) >= 0)
        dt = time.perf_counter() - t
        print(f"map-style:  index of {m} samples built in {t_index:.2f} s; {k} random reads in {dt:.2f} s "
              f"= {k / dt:.0f} samples/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
