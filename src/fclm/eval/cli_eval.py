"""Run FCLM on a benchmark and score it with the benchmark's reference protocol.

The model answers every query with the reference prompting (fclm.eval.runner); the predictions are
scored with the same code as `fclm score`; a paper-style table is printed and written to
OUT/table.md (per-task predictions and results.json beside it). --data synthetic uses held-out
synthetic test scenes (what the quickstart model was trained for). Under `accelerate launch` the
queries are sharded over processes; process 0 merges the shards and scores.
"""
from __future__ import annotations

import argparse
import json
import os

from ..cli import CLIError
from ..cli_args import add_progress_flag, check_device, check_model_dir, device_arg, positive_int
from .queries import TASKS

# benchmark of each task when --dataset is not given (real data)
DEFAULT_BENCHMARK = {"res": ("refcoco", "val"), "reasonseg": ("reasonseg", "val"), "muse": ("muse", "val"),
                     "roc": ("roc_lvis", "val"), "dlc": ("dlc_bench", "test"), "gcg": ("gcg_eval", "val"),
                     "dlres": (None, None)}


# synthetic answers are short: cap generation so an untrained model cannot run for 512 tokens
SYNTHETIC_MAX_NEW_TOKENS = {"muse": 32, "dlc": 64, "gcg": 128}


def register(sub) -> None:
    p = sub.add_parser("eval", help="run FCLM on a benchmark and score it with the reference protocol",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  fclm eval --task all --model fclm-quickstart/model --data synthetic --out eval/\n"
                              "  fclm eval --task res --model DIR --data /data/fclm --dataset refcoco+ --split testA --out eval/")
    p.add_argument("--task", required=True, choices=list(TASKS) + ["all"])
    p.add_argument("--model", metavar="DIR", help="FCLM model folder (default: ./fclm-quickstart/model)")
    p.add_argument("--data", required=True, help="dataset root, or 'synthetic' for synthetic test scenes")
    p.add_argument("--dataset", help="loader name (e.g. refcoco+, roc_paco); default per task")
    p.add_argument("--split", help="split (default per task)")
    p.add_argument("--out", required=True, help="output folder (predictions, results, table)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="at most N samples (synthetic: number of test scenes, default 100)")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:N or mps (default: the process's device)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--batch", type=positive_int, default=32, metavar="N", help="queries per decode batch (default 32)")
    p.add_argument("--max-new-tokens", type=positive_int, metavar="N",
                   help="cap on generated tokens (default: per task; DLC/GCG 512)")
    p.add_argument("--judge-url", help="DLC-Bench judge: OpenAI-compatible endpoint")
    p.add_argument("--judge-model", default="meta-llama/Llama-3.1-8B-Instruct")
    add_progress_flag(p)
    p.set_defaults(func=run, check=check)


def check(args) -> None:
    """Before torch: model folder, data root and task options."""
    if args.model:
        check_model_dir(args.model)
    if args.data != "synthetic":
        if not os.path.exists(args.data):
            raise FileNotFoundError(f"--data {args.data}: no such file or folder (or use --data synthetic)")
        tasks = list(TASKS) if args.task == "all" else [args.task]
        if args.dataset is None and any(DEFAULT_BENCHMARK[t][0] is None for t in tasks):
            raise CLIError(f"--task {args.task} on real data needs --dataset (dlres has no default benchmark)")
        if "dlc" in tasks and not args.judge_url:
            raise CLIError("DLC-Bench needs a judge: --judge-url URL [--judge-model NAME]")
    if os.path.isfile(args.out):
        raise CLIError(f"--out {args.out} is a file; give a folder")


def synthetic_test_samples(n: int, seed: int = 0, image_size: int = 256):
    from ..data.synthetic import generate_scenes

    return generate_scenes(n, "test", seed=seed, image_size=image_size)


def score_synthetic(task: str, samples: list, preds: dict) -> dict:
    """Synthetic test scenes: the benchmark protocol plus the quickstart's analogue metrics."""
    from .score import score_predictions
    from .synthetic_metrics import dlc_attribute_scores, roc_accuracy

    if task == "dlc":  # no judge questions exist for synthetic regions: the DLC-Bench analogue
        return {"task": task, "benchmark": "synthetic test", "protocol": "attribute recall / hallucination",
                "metrics": dlc_attribute_scores(samples, preds), "counts": {"queries": len(preds)}}
    r = score_predictions(task, samples, preds, benchmark="synthetic test", allow_missing=True,
                          captions=True)
    if task == "roc":
        r["metrics"]["accuracy"] = roc_accuracy(samples, preds)
    return r


def evaluate(pipeline, task: str, samples: list, out_dir: str, rank: int = 0, world: int = 1,
             batch: int = 32, progress: bool = True, score_opts: dict | None = None, wait=None,
             synthetic: bool = False, max_new_tokens: int | None = None) -> dict | None:
    """Predict + score one task; returns the results dict on process 0 (None elsewhere)."""
    from .runner import predict
    from .score import score_predictions

    os.makedirs(out_dir, exist_ok=True)
    shard = os.path.join(out_dir, f"predictions.rank{rank}.jsonl" if world > 1 else "predictions.jsonl")
    predict(pipeline, samples, task, shard, rank, world, batch, max_new_tokens=max_new_tokens, progress=progress)
    if wait is not None:
        wait()
    if rank != 0:
        return None
    preds = {}
    for r in range(world):
        path = os.path.join(out_dir, f"predictions.rank{r}.jsonl" if world > 1 else "predictions.jsonl")
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                preds[rec.pop("id")] = rec
    if synthetic:
        result = score_synthetic(task, samples, preds)
    else:
        result = score_predictions(task, samples, preds, **(score_opts or {}))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def run(args) -> int:
    from accelerate import PartialState

    from ..infer.pipeline import FCLMPipeline
    from .table import format_table

    check_device(args.device)
    state = PartialState()
    pipe = FCLMPipeline.from_pretrained(args.model, device=args.device or str(state.device), dtype=args.dtype)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    results = []
    for task in tasks:
        opts: dict = {}
        if args.data == "synthetic":
            samples = synthetic_test_samples(args.limit or 100)
        else:
            from .score import load_ground_truth

            dataset, split = args.dataset, args.split
            if dataset is None:
                dataset, split0 = DEFAULT_BENCHMARK[task]
                split = split or split0
                if dataset is None:
                    raise CLIError(f"--task {task} on real data needs --dataset")
            samples = load_ground_truth(task, args.data, dataset, split or "val")
            if not isinstance(samples, list):
                raise CLIError(f"{task}: fclm eval needs the benchmark through its loader (--dataset {dataset})")
            samples = samples[: args.limit] if args.limit else samples
            opts.update(dataset=dataset, split=split)
            if task == "dlc":
                if not args.judge_url:
                    raise CLIError("DLC-Bench needs a judge: --judge-url URL [--judge-model NAME]")
                opts.update(judge_url=args.judge_url, judge_model=args.judge_model,
                            judge_cache=os.path.join(args.out, "dlc", "judge_cache.jsonl"))
        r = evaluate(pipe, task, samples, os.path.join(args.out, task), state.process_index, state.num_processes,
                     args.batch, progress=not args.no_progress and state.is_main_process, score_opts=opts,
                     wait=state.wait_for_everyone, synthetic=args.data == "synthetic",
                     max_new_tokens=args.max_new_tokens or (SYNTHETIC_MAX_NEW_TOKENS.get(task) if args.data == "synthetic" else None))
        if r is not None:
            results.append(r)
    if state.is_main_process:
        table = format_table(results, model=os.path.basename(os.path.normpath(args.model or "fclm-quickstart")))
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(table)
        print(f"wrote {os.path.join(args.out, 'table.md')}")
    return 0
