"""Inference: the one-call pipeline, batched decoding, inputs, results and overlays.

See ``docs/inference.md``. Heavy modules (torch, transformers) load on first use.
"""
from __future__ import annotations

__all__ = ["FCLMPipeline", "GenerationOptions", "Request", "Completion", "run_batch", "RegionText",
           "SegmentationResult", "GroundingResult", "GroundedPhrase", "load_image", "load_region",
           "load_regions", "draw_result", "save_overlay", "render_overlay"]

_WHERE = {
    "FCLMPipeline": "pipeline", "GenerationOptions": "decoding", "Request": "decoding", "Completion": "decoding",
    "run_batch": "decoding", "RegionText": "results", "SegmentationResult": "results",
    "GroundingResult": "results", "GroundedPhrase": "results", "load_image": "inputs", "load_region": "inputs",
    "load_regions": "inputs", "draw_result": "visualize", "save_overlay": "visualize", "render_overlay": "visualize",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
