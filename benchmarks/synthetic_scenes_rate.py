"""Synthetic scene generation rate (was a wall-clock assertion in the test suite; speed lives here).

    python benchmarks/synthetic_scenes_rate.py [--n 200]
"""
from __future__ import annotations

import argparse
import time

from fclm.data.synthetic import generate_scenes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    generate_scenes(5, "train", seed=9)  # warm-up
    t = time.perf_counter()
    generate_scenes(args.n, "train", seed=9)
    dt = time.perf_counter() - t
    print(f"{args.n} scenes in {dt:.2f} s: {args.n / dt:.0f} scenes/s")


if __name__ == "__main__":
    main()
