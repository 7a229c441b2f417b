"""Benchmark metrics as plain functions, one module per protocol (see ``docs/evaluation.md``).

* :mod:`.seg` — RES / ReasonSeg / DL-RES cIoU and gIoU (LISA)
* :mod:`.muse` — MUSE cIoU and gIoU with Hungarian matching (PixelLM)
* :mod:`.roc` — ROC SS and sIoU (Osprey)
* :mod:`.dlc` — DLC-Bench Pos / Neg / Avg (DAM)
* :mod:`.gcg` — GCG METEOR, CIDEr, AP50, mIoU, recall (GLaMM)
* :mod:`.text_sim` — the offline text-embedding models SS and GCG recall use

Modules are imported on demand (scipy, pycocoevalcap and sentence-transformers are heavy).
"""
