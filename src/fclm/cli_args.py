"""Argument types and pre-flight checks shared by the `fclm` commands (no torch at import).

Checks that need no model run before torch is imported (``set_defaults(check=...)``), so a wrong
path or value is answered at once; :func:`check_device` runs once torch is loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct

from .cli import CLIError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "meta")


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return v


def device_arg(text: str) -> str:
    """argparse type: a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...), syntax only."""
    if not re.fullmatch(rf"({'|'.join(DEVICE_TYPES)})(:\d+)?", text.strip()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps")
    return text.strip()


def plain(doc: str) -> str:
    """A docstring as help text: RST roles and backticks removed (``x`` → x, :mod:`x` → x)."""
    doc = re.sub(r":(?:mod|func|class|meth|data|attr):`~?([^`]+)`", r"\1", doc)
    return doc.replace("`", "")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (ours, transformers' and huggingface_hub's)")


def check_device(device: str | None) -> None:
    """A requested device that this machine does not have → :class:`CLIError` (needs torch)."""
    if not device:
        return
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CLIError(f"--device {device}: CUDA is not available ({why}, torch {torch.__version__}); "
                           f"use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CLIError(f"--device {device}: Apple MPS is not available on this machine; use --device cpu")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise CLIError(f"--device {device}: no Intel XPU is available; use --device cpu")


def _safetensors_problem(path: str) -> str | None:
    """Why ``path`` is not a complete safetensors file (None when its header and size agree)."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"only {size} bytes"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"its header claims {n} bytes but the file has {size}"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        return f"unreadable header ({type(e).__name__})"
    if 8 + n + end != size:
        return f"{size} bytes where its header describes {8 + n + end} (truncated or padded)"
    return None


def check_model_dir(path: str, flag: str = "--model") -> None:
    """An FCLM model folder: exists, has config.json, and every ``*.safetensors`` in it is complete."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{flag} {path}: no such folder (make a model with `fclm quickstart` or `fclm init`)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{flag} {path}: not an FCLM model folder (no config.json)")
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{flag} {path}: no *.safetensors weights in the folder")
    for f in files:
        problem = _safetensors_problem(os.path.join(path, f))
        if problem:
            raise CLIError(f"{flag} {path}: {f} is corrupted or truncated ({problem}); "
                           f"copy or save the model again")


def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not name.endswith((".pth", ".pt", ".safetensors"))


def check_pretrained_source(name: str, flag: str, how: str | None = None) -> None:
    """``name`` is a local file/folder, or a Hub id whose config.json is cached or can be fetched now.

    Fails with one line naming ``flag`` and ``name`` and how to use a local copy instead, rather
    than transformers' long traceback ending in "Check your internet connection".
    """
    if os.path.exists(name):
        return
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(f"{flag} {name}: no such file or folder (and not a Hugging Face Hub id)")
    local = (f"download it where there is network (`hf download {name} --local-dir DIR`) and "
             f"{how or f'pass {flag} DIR'}")
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise CLIError(f"{flag} {name}: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
                       f"forbids downloading it; {local}")
    try:
        hf_hub_download(name, "config.json")
    except Exception as e:  # no network, unknown or gated repository ...
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise CLIError(f"{flag} {name}: could not get config.json from the Hugging Face Hub ({type(e).__name__}: "
                       f"{reason}); {local}") from e
