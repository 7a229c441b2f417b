"""Results → Markdown tables laid out like the FCLM paper (one table per task, a row per benchmark).

Used by ``fclm score`` and ``fclm eval``. Input: one results dict of
:func:`fclm.eval.score.score_predictions`, or a list (or ``{name: results}`` mapping) of them.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from .queries import TASKS

TASK_TITLES = {
    "res": "Referring expression segmentation (RES)",
    "dlres": "Detailed localized referring segmentation (DL-RES)",
    "reasonseg": "Reasoning segmentation (ReasonSeg)",
    "muse": "Multi-target reasoning segmentation (MUSE)",
    "roc": "Referring object classification (ROC)",
    "dlc": "Detailed localized captioning (DLC-Bench)",
    "gcg": "Grounded conversation generation (GCG)",
}
TASK_COLUMNS = {
    "res": ["cIoU", "gIoU"],
    "dlres": ["gIoU", "cIoU"],
    "reasonseg": ["gIoU", "cIoU"],
    "muse": ["gIoU", "cIoU"],
    "roc": ["SS", "sIoU"],
    "dlc": ["Pos", "Neg", "Avg"],
    "gcg": ["METEOR", "CIDEr", "AP50", "mIoU", "Recall"],
}


def _as_list(results) -> list[dict]:
    if isinstance(results, Mapping) and "task" in results:
        return [dict(results)]
    if isinstance(results, Mapping):
        out = []
        for name, r in results.items():
            out.append({**r, "benchmark": r.get("benchmark") or str(name)})
        return out
    return list(results)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:.1f}"
    return str(v)


def format_table(results: Mapping | Iterable[Mapping], model: str | None = None) -> str:
    """Markdown: for each task present (in paper order) a heading and a table whose rows are the
    benchmarks (``results["benchmark"]``) and whose columns are the task's metrics (percent, 1 dp).
    ``model`` adds a first column naming the model."""
    rows = _as_list(results)
    parts: list[str] = []
    for task in TASKS:
        mine = [r for r in rows if r.get("task") == task]
        if not mine:
            continue
        cols = list(TASK_COLUMNS[task])
        for r in mine:  # any extra metric a caller added goes at the end
            cols += [k for k in r.get("metrics", {}) if k not in cols]
        head = (["Model"] if model else []) + ["Benchmark"] + cols
        lines = [f"### {TASK_TITLES[task]}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join([" --- "] * (len(head) - len(cols)) + [" ---: "] * len(cols)) + "|"]
        for r in mine:
            m = r.get("metrics", {})
            cells = ([model] if model else []) + [str(r.get("benchmark") or task)] + [_fmt(m.get(c)) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")
