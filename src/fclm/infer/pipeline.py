"""FCLMPipeline: the one-call Python API (describe, classify, segment, ground).

>>> from fclm.infer import FCLMPipeline
>>> pipe = FCLMPipeline.from_pretrained("fclm-quickstart/model")
>>> pipe.describe("photo.jpg", ["dog.png", [10, 20, 200, 240]])     # mask file and a box
>>> pipe.classify("photo.jpg", [rle_dict])                           # ['dog']
>>> pipe.segment("photo.jpg", "the dog on the left").masks[0]         # HxW bool
>>> pipe.segment("photo.jpg", "the dog on the left", teacher_forced=True)   # RES eval protocol
>>> pipe.segment("photo.jpg", "Which object has the same colour as <region>?", regions=[mask])
>>> pipe.ground("photo.jpg").phrases                                  # GCG

Every call batches its regions / queries (see :mod:`fclm.infer.decoding`): N regions of one image
share one vision-encoder pass, one prompt-prefix prefill and one decode loop.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence


from ..data.schema import MAX_IMAGE_PIXELS, FCLMDataError
from .decoding import Completion, GenerationOptions, Request, run_batch
from .inputs import load_image, load_regions
from .results import GroundedPhrase, GroundingResult, RegionText, SegmentationResult, parse_grounded_caption

__all__ = ["FCLMPipeline", "PROMPTS", "default_model_dir"]


def _eval_prompts() -> dict[str, str]:
    """The fixed evaluation prompt of each task (from :mod:`fclm.data.prompts`)."""
    from ..data.prompts import EVAL_TEMPLATES

    p = {k: EVAL_TEMPLATES[k][0] for k in ("roc", "dlc", "res", "reasonseg", "dlres", "gcg")}
    p["seg_answer"] = EVAL_TEMPLATES["res"][1]
    p["short"] = EVAL_TEMPLATES["region_caption"][0]  # a short region description
    p["region_seg_suffix"] = " Please output segmentation mask."
    return p


PROMPTS = _eval_prompts()
QUICKSTART_MODEL = os.path.join("fclm-quickstart", "model")


def default_model_dir() -> str:
    """``./fclm-quickstart/model`` when it exists, else a clear error saying how to get a model."""
    if os.path.isdir(QUICKSTART_MODEL):
        return QUICKSTART_MODEL
    raise FileNotFoundError(
        f"no model given and no quickstart model at ./{QUICKSTART_MODEL}. Get one with `fclm quickstart` "
        f"(trains a tiny model there), or build one with `fclm init --llm Qwen/Qwen2.5-VL-3B-Instruct "
        f"--sam facebook/sam-vit-huge --out DIR` (or `fclm init --tiny --out DIR`) and pass --model DIR")


def _strip_label(text: str) -> str:
    return text.strip().rstrip(".").strip()


def _image_key(image: Any) -> Any:
    """Queries with equal keys share one image encoding: the same path, or the same object."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.path.abspath(os.fspath(image)))
    return ("obj", id(image))


class FCLMPipeline:
    """Inference with a trained FCLM. Build with :meth:`from_pretrained` or ``FCLMPipeline(model, processor)``."""

    def __init__(self, model, processor, max_pixels: int = MAX_IMAGE_PIXELS, batch_size: int = 32,
                 generation: GenerationOptions | None = None):
        self.model = model.eval()
        self.processor = processor
        self.max_pixels = max_pixels
        self.batch_size = batch_size  # rows per decode batch
        self.generation = generation or GenerationOptions()

    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str | None = None, dtype: Any = None,
                        **kwargs) -> "FCLMPipeline":
        """Load a saved FCLM folder. ``device`` default: CUDA when available, else CPU; ``dtype``
        default: bfloat16 on CUDA, float32 on CPU (strings like ``"bfloat16"`` accepted)."""
        import torch

        from ..model.builders import load_fclm

        path = path or default_model_dir()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no FCLM model folder at {path} (make one with `fclm quickstart` or `fclm init`)")
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path} is not an FCLM model folder (no config.json)")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}")
            dtype = getattr(torch, dtype)
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        model, processor = load_fclm(path, device=device, dtype=dtype)
        return cls(model, processor, **kwargs)

    # ------------------------------------------------------------ plumbing
    def _opts(self, defaults: dict | None = None, **gen) -> GenerationOptions:
        """Options: the pipeline's, then the task's ``defaults``, then the call's (None = not given)."""
        merged = {**(defaults or {}), **{k: v for k, v in gen.items() if v is not None}}
        return GenerationOptions.from_kwargs(self.generation, **merged)

    def _run(self, requests: list[Request], opts: GenerationOptions, decode_seg: bool = True,
             keep_logits: bool = False) -> list[Completion]:
        """Run requests in chunks of ``batch_size`` rows, keeping rows of one image together."""
        order = sorted(range(len(requests)), key=lambda i: (str(requests[i].key()), i))
        out: list[Completion | None] = [None] * len(requests)
        for s in range(0, len(order), self.batch_size):
            idx = order[s: s + self.batch_size]
            for i, c in zip(idx, run_batch(self.model, self.processor, [requests[i] for i in idx], opts, decode_seg,
                                         keep_logits)):
                out[i] = c
        return out  # type: ignore[return-value]

    def _image(self, image: Any):
        return load_image(image, self.max_pixels)

    # ------------------------------------------------------------ captioning
    def describe(self, image: Any, regions: Any, detailed: bool = True, prompt: str | None = None,
                 **gen) -> list[RegionText]:
        """One text per region: a detailed localized caption (DLC prompt) or, with ``detailed=False``,
        a short description. ``prompt`` overrides the template (must hold one ``<region>``)."""
        return self.describe_many([(image, regions)], detailed, prompt, **gen)[0]

    def describe_many(self, items: Sequence[tuple[Any, Any]], detailed: bool = True, prompt: str | None = None,
                      **gen) -> list[list[RegionText]]:
        """:meth:`describe` for several ``(image, regions)`` pairs, all decoded together."""
        opts = self._opts({"max_new_tokens": 512 if detailed else 64}, **gen)
        prompt = prompt or (PROMPTS["dlc"] if detailed else PROMPTS["short"])
        return self._region_texts(items, prompt, opts, strip=False)

    def classify(self, image: Any, regions: Any, prompt: str | None = None, **gen) -> list[str]:
        """One category label per region (ROC prompt, greedy, at most 8 new tokens by default)."""
        return [r.text for r in self.classify_many([(image, regions)], prompt, **gen)[0]]

    def classify_many(self, items: Sequence[tuple[Any, Any]], prompt: str | None = None,
                      **gen) -> list[list[RegionText]]:
        opts = self._opts({"max_new_tokens": 8}, **gen)
        return self._region_texts(items, prompt or PROMPTS["roc"], opts, strip=True)

    def _region_texts(self, items, prompt: str, opts: GenerationOptions, strip: bool) -> list[list[RegionText]]:
        if prompt.count("<region>") != 1:
            raise FCLMDataError(f"a region prompt needs exactly one <region> slot: {prompt!r}")
        requests, spans = [], []
        for k, (image, regions) in enumerate(items):
            img = self._image(image)
            masks = load_regions(regions, img.size[1], img.size[0])
            if not masks:
                raise FCLMDataError("no region given: pass at least one mask, RLE, polygon or box")
            key = _image_key(image)  # items showing the same image (path or object) share its encodings
            spans.append((len(requests), len(masks)))
            requests += [Request(img, prompt, [m], image_key=key, name=f"region {j}") for j, m in enumerate(masks)]
        outs = self._run(requests, opts, decode_seg=False)
        res = []
        for s, n in spans:
            res.append([RegionText(j, _strip_label(c.text) if strip else c.text.strip(), c.text, c.finish_reason)
                        for j, c in enumerate(outs[s: s + n])])
        return res

    # ------------------------------------------------------------ grounding
    def build_segment_prompt(self, text: str, style: str = "auto") -> str:
        """The user prompt for ``segment``.

        ``style``: ``"raw"`` (text as given), ``"res"`` (RES template around a referring expression),
        ``"reason"`` (``{question} Please output segmentation mask.``), ``"dlres"`` (a detailed caption),
        or ``"auto"``: as given when it already asks for a mask/segmentation; a question (ends with
        "?") or text with ``<region>`` gets " Please output segmentation mask." appended; text of at
        most 12 words the RES template; longer text the DL-RES template.
        """
        t = text.strip()
        if not t:
            raise FCLMDataError("segment: the text is empty")
        if style == "raw":
            return t
        if style == "auto":
            if re.search(r"segment|mask", t, re.IGNORECASE):
                return t
            if t.endswith("?") or "<region>" in t:
                style = "reason"
            else:
                style = "res" if len(t.split()) <= 12 else "dlres"
        if style == "res":
            return PROMPTS["res"].format(expr=t.rstrip("."))
        if style == "reason":
            return PROMPTS["reasonseg"].format(question=t)
        if style == "dlres":
            return PROMPTS["dlres"].format(caption=t.rstrip().rstrip("."))
        raise ValueError(f"unknown prompt style {style!r}; use auto, raw, res, reason or dlres")

    def segment(self, image: Any, text: str, regions: Any = None, teacher_forced: bool = False,
                answer: str | None = None, prompt_style: str = "auto", keep_logits: bool = False,
                **gen) -> SegmentationResult:
        """Mask(s) for a referring expression, question or caption (one mask per ``[SEG]`` emitted).

        ``regions``: region-in, mask-out — ``text`` holds one ``<region>`` per region.
        ``teacher_forced=True``: the reference RES protocol — one forward with the answer
        ``Sure, [SEG].`` (or ``answer``) appended, masks from its ``[SEG]`` states; no generation.
        """
        prompt = self.build_segment_prompt(text, prompt_style)
        if teacher_forced and answer is None:
            answer = PROMPTS["seg_answer"]
        q = (image, prompt, answer if teacher_forced or answer is not None else None, regions)
        return self.run_grounding([q], keep_logits=keep_logits, **gen)[0]

    def run_grounding(self, queries: Sequence[Any], keep_logits: bool = False, **gen) -> list[SegmentationResult]:
        """Many grounding queries at once (the evaluator's entry point).

        Each query is ``(image, prompt, answer_or_None)`` or ``(image, prompt, answer_or_None, regions)``
        (or a dict with those keys). The prompt is used verbatim (fill templates first). ``answer``
        given → teacher forcing (one forward, ``[SEG]`` states read from it); None → free generation.
        Queries on the same image (same path, or the same image object) share its vision and SAM
        encodings and the prompt-prefix prefill.
        """
        opts = self._opts(**gen)
        requests, sizes = [], []
        loaded: dict[Any, Any] = {}
        for i, q in enumerate(queries):
            if isinstance(q, dict):
                image, prompt, answer, regions = q["image"], q["prompt"], q.get("answer"), q.get("regions")
            elif len(q) == 3:
                (image, prompt, answer), regions = q, None
            else:
                image, prompt, answer, regions = q
            key = _image_key(image)
            if key not in loaded:
                loaded[key] = self._image(image)
            img = loaded[key]
            masks = load_regions(regions, img.size[1], img.size[0]) if regions is not None else []
            requests.append(Request(img, prompt, masks, answer=answer, image_key=key,
                                    name=f"query {i}" if len(queries) > 1 else ""))
            sizes.append((img.size[1], img.size[0]))
        outs = self._run(requests, opts, keep_logits=keep_logits)
        res = []
        for c, hw in zip(outs, sizes):
            res.append(SegmentationResult(text=c.text.strip(), raw=c.text, masks=c.masks,
                                          image_size=hw, finish_reason=c.finish_reason,
                                          mask_logits=c.mask_logits if keep_logits else None))
        return res

    def ground(self, image: Any, prompt: str | None = None, **gen) -> GroundingResult:
        """Grounded caption (GCG): caption, phrases from ``<p> phrase </p> [SEG]``, a mask per phrase."""
        return self.ground_many([image], prompt, **gen)[0]

    def ground_many(self, images: Sequence[Any], prompt: str | None = None, **gen) -> list[GroundingResult]:
        opts = self._opts({"max_new_tokens": 512}, **gen)
        requests = []
        for i, image in enumerate(images):
            img = self._image(image)
            requests.append(Request(img, prompt or PROMPTS["gcg"], image_key=("gcg", i)))
        outs = self._run(requests, opts)
        res = []
        for c, rq in zip(outs, requests):
            caption, phrases = parse_grounded_caption(c.text)
            used = set()
            gp = []
            for text, span, k in phrases:
                m = c.masks[k] if k is not None and k < len(c.masks) else None
                if m is not None:
                    used.add(k)
                gp.append(GroundedPhrase(text, span, m))
            extra = [m for k, m in enumerate(c.masks) if k not in used]
            res.append(GroundingResult(caption, c.text, gp, extra, (rq.image.size[1], rq.image.size[0]),
                                       c.finish_reason))
        return res
