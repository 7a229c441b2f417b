"""Console entry point of `fclm` (``fclm = "fclm_cli:main"``): answers ``--help`` and argument errors
without importing torch or transformers.

``import fclm`` registers FCLM's Auto classes with transformers, which imports the whole model stack
(seconds). The entry point therefore puts the ``fclm`` package in place *without* running its
``__init__`` (its submodules import normally), parses the command line with :mod:`fclm.cli`, and
runs ``fclm/__init__`` only when a command that needs the model starts
(:func:`fclm.cli.finish_package_init`). Touching a public name (``fclm.FCLMPipeline`` ...) before
that also completes the import. ``python -m fclm.cli`` and ``import fclm`` behave as before.
"""
from __future__ import annotations

import importlib.util
import sys

_PUBLIC = {"FCLMConfig", "FCLMForConditionalGeneration", "FCLMProcessor", "FCLMPipeline", "__version__"}


def _defer_package_init() -> None:
    if "fclm" in sys.modules:
        return
    spec = importlib.util.find_spec("fclm")
    pkg = importlib.util.module_from_spec(spec)

    def __getattr__(name: str):
        if name not in _PUBLIC:
            raise AttributeError(f"module 'fclm' has no attribute {name!r}")
        from fclm.cli import finish_package_init

        finish_package_init()
        return getattr(pkg, name)

    pkg.__fclm_deferred_init__ = True
    pkg.__getattr__ = __getattr__
    sys.modules["fclm"] = pkg


def main(argv: list[str] | None = None) -> int:
    _defer_package_init()
    from fclm.cli import main as fclm_main

    return fclm_main(argv)
