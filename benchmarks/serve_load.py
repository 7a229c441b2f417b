"""Load test of `fclm serve`: N concurrent clients x M requests, dynamic batching on vs off.

Loopback only (127.0.0.1, a free port), bounded (stops issuing requests after --max-seconds), on the
tiny random model with an untied random LM head (so answers differ per image and region; see
``fclm.serve.testing.varied_tiny_pipeline``). The request mix (``--tasks``): ``describe`` (one region of a
synthetic scene, greedy, at most --new-tokens tokens) and/or teacher-forced ``segment`` (a COCO-RLE
mask); requests of different tasks never share a batch.

1. reference: every distinct request sent alone, one at a time, to a server with batching off;
2. load: the same request mix from N closed-loop clients, first with batching off
   (``max_batch_size=1``), then on; every response must equal its reference answer exactly (no lost,
   failed or mixed-up responses) — the script exits 1 otherwise.

Prints p50/p99 latency and throughput of both runs and the speed-up, as JSON (and a Markdown row).

    python benchmarks/serve_load.py [--clients 16] [--requests 8] [--new-tokens 32] [--max-batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def workload(n_images: int, tasks=("describe", "segment"), seed: int = 0):
    """Distinct request bodies: per image, describe its first object and/or segment its referring expression
    (one image per request of a task, so every answer tells its request apart)."""
    from fclm.data.synthetic import generate_scenes
    from fclm.serve.testing import png_b64

    bodies = []
    for s in generate_scenes(n_images, "test", seed=seed, image_size=128):
        b64 = png_b64(s.image.open())
        if "describe" in tasks:
            bodies.append(("describe", {"image": b64, "regions": [s.objects[0].mask], "max_new_tokens": None}))
        if "segment" in tasks:
            expr = (s.objects[0].expressions or [s.objects[0].category or "the object"])[0]
            bodies.append(("segment", {"image": b64, "text": expr, "teacher_forced": True}))
    return bodies


def strip(out: dict) -> dict:
    return {k: v for k, v in out.items() if k != "overlay_png"}


def run_load(url: str, bodies, clients: int, per_client: int, deadline: float):
    """N closed-loop clients; returns (latencies, [(index, status, answer)], wall seconds)."""
    from fclm.serve.testing import post_json

    lat: list[float] = []
    answers: list[tuple[int, int, dict]] = []
    lock = threading.Lock()

    def client(c: int):
        for m in range(per_client):
            if time.monotonic() > deadline:
                return
            i = (c * per_client + m) % len(bodies)
            task, body = bodies[i]
            t0 = time.monotonic()
            try:
                s, out = post_json(f"{url}/v1/{task}", body, timeout=300)
            except Exception as e:  # a lost response is recorded, not raised
                s, out = -1, {"error": repr(e)}
            dt = time.monotonic() - t0
            with lock:
                lat.append(dt)
                answers.append((i, s, out))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.monotonic()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return lat, answers, time.monotonic() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--images", type=int, default=16, help="distinct synthetic scenes (a request per task each)")
    ap.add_argument("--tasks", default="describe,segment", help="request mix: describe, segment or both (default)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="stop issuing requests after this long")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared, loaded machine more threads only spin)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.torch_threads)
    from fclm.serve.app import ServerThread, create_app
    from fclm.serve.limits import ServeLimits
    from fclm.serve.testing import post_json, varied_tiny_pipeline

    deadline = time.monotonic() + args.max_seconds
    pipe = varied_tiny_pipeline(seed=0)
    tasks = tuple(t.strip() for t in args.tasks.split(","))
    if not tasks or set(tasks) - {"describe", "segment"}:
        ap.error(f"--tasks: give describe and/or segment, not {args.tasks!r}")
    bodies = workload(args.images, tasks)
    for _, b in bodies:
        if "max_new_tokens" in b:
            b["max_new_tokens"] = args.new_tokens
    n_total = args.clients * args.requests

    def serve(batch: int):
        lim = ServeLimits(max_batch_size=batch, max_wait_ms=args.max_wait_ms if batch > 1 else 0.0,
                          max_queue=max(256, 2 * args.clients))
        return ServerThread(create_app(pipe, lim), "127.0.0.1", 0).start()

    # 1. single-request answers
    srv = serve(1)
    ref = []
    t0 = time.monotonic()
    for task, body in bodies:
        s, out = post_json(f"{srv.url}/v1/{task}", body, timeout=300)
        if s != 200:
            print(f"reference request failed: {s} {out}", file=sys.stderr)
            return 1
        ref.append(strip(out))
    single_s = (time.monotonic() - t0) / len(bodies)
    srv.stop()
    distinct = len({json.dumps(r, sort_keys=True) for r in ref})

    result = {"tasks": list(tasks), "clients": args.clients, "requests_per_client": args.requests, "distinct_requests": len(bodies),
              "distinct_answers": distinct, "new_tokens": args.new_tokens, "single_request_s": round(single_s, 4),
              "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "load_before": os.getloadavg()[0], "runs": {}}
    ok = True
    for name, batch in (("off", 1), ("on", args.max_batch_size)):
        srv = serve(batch)
        lat, answers, wall = run_load(srv.url, bodies, args.clients, args.requests, deadline)
        stats = srv.server.config.app  # GuardMiddleware → FastAPI app
        bstats = dict(stats.app.state.batcher.stats)
        srv.stop()
        failed = [(i, s) for i, s, _ in answers if s != 200]
        mixed = [i for i, s, out in answers if s == 200 and strip(out) != ref[i]]
        lost = n_total - len(answers)
        ok &= not failed and not mixed and not lost
        result["runs"][name] = {
            "max_batch_size": batch, "completed": len(answers), "lost": lost, "failed": len(failed),
            "mismatched": len(mixed), "wall_s": round(wall, 2), "throughput_rps": round(len(answers) / wall, 2),
            "p50_s": round(percentile(lat, 50), 3), "p99_s": round(percentile(lat, 99), 3),
            "batches": bstats["batches"], "mean_rows_per_batch": round(bstats["rows"] / max(1, bstats["batches"]), 2),
            "max_rows": bstats["max_rows"]}
        if failed or mixed:
            print(f"batching {name}: {len(failed)} failed {failed[:3]}, {len(mixed)} answers differ from the "
                  f"single-request answer (request indices {mixed[:5]})", file=sys.stderr)
    on, off = result["runs"]["on"], result["runs"]["off"]
    result["speedup"] = round(on["throughput_rps"] / off["throughput_rps"], 2)
    result["load_after"] = os.getloadavg()[0]
    result["all_answers_match"] = ok
    print(json.dumps(result, indent=1))
    print(f"| {'+'.join(tasks)} | {args.clients} x {args.requests} | {off['throughput_rps']} | {on['throughput_rps']} | "
          f"**{result['speedup']}x** | {off['p50_s']} / {off['p99_s']} | {on['p50_s']} / {on['p99_s']} | "
          f"{on['mean_rows_per_batch']} | {'yes' if ok else 'NO'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
