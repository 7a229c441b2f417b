"""FCLM model: config, modeling, processor, builders.

Names load on first use, so ``fclm.model.cli_init`` can build its parser without torch; the Auto
classes are registered by ``import fclm`` (``fclm/__init__.py``).
"""
from __future__ import annotations

__all__ = ["FCLMConfig", "FCLMForConditionalGeneration", "FCLMOutput", "FCLMProcessor"]

_WHERE = {"FCLMConfig": "configuration_fclm", "FCLMForConditionalGeneration": "modeling_fclm",
          "FCLMOutput": "modeling_fclm", "register_auto_classes": "modeling_fclm", "FCLMProcessor": "processing_fclm"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
