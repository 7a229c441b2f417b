"""`fclm quickstart --ablate`: FCLM's two consistency losses tested in miniature.

Trains the quickstart recipe four times on the same seeds — with and without L_self (stage 1) and
with and without L_latent (both stages: the quickstart uses it in stage 1 too) — and evaluates RES, DL-RES
and ROC on the same held-out test scenes. Writes ``ablation.json`` and ``ablation.md``. The figures
are reported as measured, whichever way they fall.
"""
from __future__ import annotations

import json
import os

ABLATION_TASKS = ("res", "dlres", "roc")


def run_ablation(out: str, stage1_steps: int | None = None, stage2_steps: int | None = None,
                 test_scenes: int = 60, seed: int = 0, progress: bool = True) -> str:
    import shutil

    from .config import load_train_config
    from .quickstart import evaluate_all, packaged_config
    from .trainer import Trainer

    rows = []
    for use_self in (True, False):
        for use_latent in (True, False):
            name = f"self{int(use_self)}-latent{int(use_latent)}"
            # L_latent off means off in both stages (the quickstart's stage 1 uses it on all targets)
            o1 = [f"output_dir={os.path.join(out, f'stage1-{name}')}", f"seed={seed}",
                  f"model.overrides.self_recon_weight={1.0 if use_self else 0.0}",
                  f"model.overrides.latent_weight={1.0 if use_latent else 0.0}"]
            if stage1_steps:
                o1.append(f"steps={stage1_steps}")
            final1 = Trainer(load_train_config(packaged_config("quickstart-stage1.yaml"), o1), progress=progress).run()
            s2_dir = os.path.join(out, f"stage2-{name}")
            o2 = [f"output_dir={s2_dir}", f"model.path={final1}", f"seed={seed + 1}",
                  f"model.overrides.latent_weight={1.0 if use_latent else 0.0}"]
            if stage2_steps:
                o2.append(f"steps={stage2_steps}")
            final2 = Trainer(load_train_config(packaged_config("quickstart-stage2.yaml"), o2), progress=progress).run()
            metrics = evaluate_all(final2, s2_dir, test_scenes, ABLATION_TASKS, progress=progress)
            rows.append({"L_self": use_self, "L_latent": use_latent,
                         **{f"{t}/{k}": v for t, m in metrics.items() for k, v in m["metrics"].items()}})
            for d in (os.path.join(out, f"stage1-{name}", "checkpoints"), os.path.join(s2_dir, "checkpoints")):
                shutil.rmtree(d, ignore_errors=True)
    cols = [k for k in rows[0] if k not in ("L_self", "L_latent")]
    lines = ["| L_self | L_latent | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {'✓' if r['L_self'] else '–'} | {'✓' if r['L_latent'] else '–'} | "
                     + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    table = "\n".join(lines)
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump({"rows": rows, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
                   "test_scenes": test_scenes, "seed": seed}, f, indent=2)
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write("# Consistency-loss ablation (quickstart scale)\n\n" + table + "\n")
    return table
