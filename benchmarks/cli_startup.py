"""Start-up time of the `fclm` command vs `python -c "import torch"`, interleaved in one run.

    python benchmarks/cli_startup.py [--repeats 7]

Each case runs in a fresh interpreter (the console entry point `fclm_cli`); the medians and their
ratio to `import torch` are printed as a markdown table (docs/benchmarks.md, issue 13).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
CASES = {
    'python -c "import torch"': ["-c", "import torch"],
    "fclm --help": ["-m", "fclm_cli", "--help"],
    "fclm segment --help": ["-m", "fclm_cli", "segment", "--help"],
    "fclm segment IMG (argument error: no TEXT)": ["-m", "fclm_cli", "segment", "img.png"],
    "fclm segment IMG T --max-new-tokens -5": ["-m", "fclm_cli", "segment", "img.png", "t", "--max-new-tokens", "-5"],
    "fclm init (usage error after parsing)": ["-m", "fclm_cli", "init"],
    'python -c "import fclm" (full package)': ["-c", "import fclm"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for name, argv in CASES.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times['python -c "import torch"'])
    print(f"| command | median s ({args.repeats} runs) | / import torch |\n|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| `{name}` | {m:.3f} | {m / ref:.2f} |")


if __name__ == "__main__":
    main()
