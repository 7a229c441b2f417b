"""FCLMProcessor: text + image + masks → model tensors (SPEC §1.2, §1.3).

Combines a tokenizer (FCLM's special tokens added), the Qwen2-VL image processor (image resized to
a long side of ``image_long_side`` first), SAM preprocessing (long side ``sam_image_size``, ImageNet
normalisation, bottom-right padding) and region crops for local aggregation. Conversations use
Qwen2.5-VL's ChatML layout; labels cover assistant answers only. ``<region>`` in user text is
expanded to ``<mask><pos>``; slot order is the order of ``region_masks``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..data.schema import FCLMDataError
from .configuration_fclm import REGION_PLACEHOLDER, SPECIAL_TOKENS

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|endoftext|>"]
SAM_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
PROCESSOR_FILE = "fclm_processor.json"


def add_fclm_tokens(tokenizer) -> dict[str, int]:
    """Add FCLM's special tokens (idempotent) and return their ids via ``convert_tokens_to_ids``."""
    missing = [t for t in SPECIAL_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {k: tokenizer.convert_tokens_to_ids(t) for k, t in SPECIAL_TOKENS.items()}


def _image_processor(long_side: int, patch: int = 14, merge: int = 2):
    try:
        from transformers import Qwen2VLImageProcessorPil as cls
    except ImportError:  # older 5.x: the generic class falls back to PIL without torchvision
        from transformers import Qwen2VLImageProcessor as cls
    unit = patch * merge
    return cls(size={"shortest_edge": unit * unit, "longest_edge": long_side * long_side},
               patch_size=patch, merge_size=merge)


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    w, h = image.size
    s = long_side / max(w, h)
    return image.resize((max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))), Image.BILINEAR)


def sam_preprocess(image: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """SAM input: long side ``size``, normalised, padded bottom-right → ``(3, S, S)``, valid (h, w)."""
    im = resize_long_side(image, size)
    arr = (np.asarray(im, dtype=np.float32) - SAM_MEAN) / SAM_STD
    out = np.zeros((size, size, 3), dtype=np.float32)
    out[: arr.shape[0], : arr.shape[1]] = arr
    return out.transpose(2, 0, 1), (arr.shape[0], arr.shape[1])


def region_crop(image: Image.Image, mask: np.ndarray, size: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Crop image and mask to the mask's box (plus ``margin`` of its size), resize both to S×S."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    H, W = mask.shape
    box = (max(0, x0 - mx), max(0, y0 - my), min(W, x1 + mx), min(H, y1 + my))
    crop = image.crop(box).resize((size, size), Image.BILINEAR)
    cm = Image.fromarray(mask[box[1]: box[3], box[0]: box[2]].astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    arr = (np.asarray(crop, dtype=np.float32) - SAM_MEAN) / SAM_STD
    return arr.transpose(2, 0, 1), np.asarray(cm) > 127


@dataclass
class EncodedExample:
    """One example's tensors before batching."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    sam_pixel_values: np.ndarray
    sam_valid_size: tuple[int, int]
    original_size: tuple[int, int]
    region_masks: list[np.ndarray] = field(default_factory=list)
    region_crops: list[np.ndarray] = field(default_factory=list)
    region_crop_masks: list[np.ndarray] = field(default_factory=list)
    target_masks: list[np.ndarray] = field(default_factory=list)
    pair_keys_regions: list[str | None] = field(default_factory=list)
    pair_keys_segs: list[str | None] = field(default_factory=list)
    object_masks: list[np.ndarray] = field(default_factory=list)  # all annotated objects (L_self scope)


class FCLMProcessor:
    """See the module docstring. Build with :meth:`from_tokenizer` or :meth:`from_pretrained`."""

    def __init__(self, tokenizer, image_long_side: int = 1024, sam_image_size: int = 1024,
                 patch_size: int = 14, merge_size: int = 2, with_local_crops: bool = True,
                 crop_margin: float = 0.1, max_length: int = 4096,
                 system_prompt: str = "You are a helpful assistant.", with_object_masks: bool = False):
        self.tokenizer = tokenizer
        self.token_ids = add_fclm_tokens(tokenizer)
        for t in CHAT_TOKENS:
            if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id):
                raise ValueError(f"tokenizer lacks the chat token {t!r}")
        self.image_long_side, self.sam_image_size = image_long_side, sam_image_size
        self.patch_size, self.merge_size = patch_size, merge_size
        self.with_local_crops, self.crop_margin = with_local_crops, crop_margin
        self.max_length, self.system_prompt = max_length, system_prompt
        self.with_object_masks = with_object_masks  # set from config.self_recon_scope by the trainer
        self.image_processor = _image_processor(image_long_side, patch_size, merge_size)
        self.pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        keys = ("image_long_side", "sam_image_size", "patch_size", "merge_size", "with_local_crops",
                "crop_margin", "max_length", "system_prompt")
        return {k: getattr(self, k) for k in keys}

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, PROCESSOR_FILE), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, **overrides) -> "FCLMProcessor":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        cfg_path = os.path.join(path, PROCESSOR_FILE)
        kw = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        kw.update(overrides)
        return cls(tok, **kw)

    # ------------------------------------------------------------ text
    def user_texts(self, texts: list[str], n_regions: int, where: str = "") -> list[str]:
        """Expand ``<region>`` into ``<mask><pos>`` in the user turns of one conversation; their
        slots together (turn order) must match the ``n_regions`` region masks."""
        found = sum(t.count(REGION_PLACEHOLDER) for t in texts)
        if found != n_regions:
            raise FCLMDataError(f"{where}text has {found} {REGION_PLACEHOLDER} slots but {n_regions} region masks were given")
        return [t.replace(REGION_PLACEHOLDER, SPECIAL_TOKENS["mask"] + SPECIAL_TOKENS["pos"]) for t in texts]

    def user_text(self, text: str, n_regions: int, where: str = "") -> str:
        return self.user_texts([text], n_regions, where)[0]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def build_ids(self, user: str, answer: str | None, n_image_tokens: int,
                  history: list[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
        """ChatML ids and labels. ``answer=None`` ends with the generation prompt (inference)."""
        ids = self._ids(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n<|vision_start|>")
        ids += [self.tokenizer.convert_tokens_to_ids("<|image_pad|>")] * n_image_tokens
        labels = [-100] * len(ids)
        turns = list(history) + [(user, answer)]
        for k, (u, a) in enumerate(turns):
            head = ("<|vision_end|>" if k == 0 else "<|im_start|>user\n") + u + "<|im_end|>\n<|im_start|>assistant\n"
            h = self._ids(head)
            ids += h
            labels += [-100] * len(h)
            if a is None:
                break
            ans = self._ids(a) + [self.im_end_id]
            ids += ans
            labels += ans
            nl = self._ids("\n")
            ids += nl
            labels += [-100] * len(nl)
        return ids, labels

    # ------------------------------------------------------------ one example
    def encode(self, image: Image.Image, user: str, answer: str | None = None,
               region_masks: list[np.ndarray] = (), target_masks: list[np.ndarray] = (),
               history: list[tuple[str, str]] = (), where: str = "",
               pair_keys: tuple[list, list] | None = None) -> EncodedExample:
        """Encode one conversation about one image (``where`` names it in error messages)."""
        W, H = image.size
        region_masks = [np.asarray(m).astype(bool) for m in region_masks]
        for i, m in enumerate(region_masks):
            if m.shape != (H, W):
                raise FCLMDataError(f"{where}region mask {i} has size {m.shape[1]}x{m.shape[0]} but the image is {W}x{H}")
            if not m.any():
                raise FCLMDataError(f"{where}region mask {i} is empty")
        if answer is not None and target_masks is not None:
            # history turns' slots come first (turn order), then those of the last turn
            n_seg = sum(a.count(SPECIAL_TOKENS["seg"]) for _, a in history) + answer.count(SPECIAL_TOKENS["seg"])
            if n_seg != len(target_masks):
                raise FCLMDataError(f"{where}answers have {n_seg} [SEG] tokens but {len(target_masks)} target masks "
                                    f"(a grounding answer needs one [SEG] per target): {answer[:80]!r}")
        for i, m in enumerate(target_masks or []):
            if np.asarray(m).shape != (H, W):
                raise FCLMDataError(f"{where}target mask {i} has shape {np.asarray(m).shape}, image is {H}x{W}")
        *hist_users, text = self.user_texts([u for u, _ in history] + [user], len(region_masks), where)
        hist = [(u, a) for u, (_, a) in zip(hist_users, history)]
        resized = resize_long_side(image, self.image_long_side)
        vis = self.image_processor(images=[resized], return_tensors="pt")
        grid = vis["image_grid_thw"][0]
        n_img = int(grid.prod()) // self.merge_size**2
        ids, labels = self.build_ids(text, answer, n_img, hist)
        if len(ids) > self.max_length:
            raise FCLMDataError(f"{where}conversation is {len(ids)} tokens, above max_length={self.max_length}")
        sam_px, valid = sam_preprocess(image, self.sam_image_size)
        crops, cmasks = [], []
        if self.with_local_crops:
            for m in region_masks:
                c, cm = region_crop(image, m, self.sam_image_size, self.crop_margin)
                crops.append(c)
                cmasks.append(cm)
        rk, sk = pair_keys if pair_keys else ([None] * len(region_masks), [None] * len(target_masks or []))
        return EncodedExample(ids, labels, vis["pixel_values"], grid, sam_px, valid, (H, W), region_masks,
                              crops, cmasks, [np.asarray(t, dtype=np.uint8) for t in (target_masks or [])],
                              list(rk), list(sk))

    def encode_example(self, ex, image: Image.Image | None = None) -> EncodedExample:
        """Encode a :class:`fclm.data.schema.Example` (masks decoded from its sample)."""
        from ..data.masks import box_to_mask, decode_rle

        s = ex.sample
        where = f"{s.source}:{s.id} ({ex.task}): "
        image = image if image is not None else s.image.open()
        if image.size != (s.width, s.height):
            raise FCLMDataError(f"{where}image is {image.size[0]}x{image.size[1]} but the record says {s.width}x{s.height}")

        def obj_mask(i: int) -> np.ndarray:
            if i >= len(s.objects):
                raise FCLMDataError(f"{where}object index {i} out of range ({len(s.objects)} objects)")
            ob = s.objects[i]
            if ob.mask is not None:
                return decode_rle(ob.mask)
            if ob.box is not None:
                return box_to_mask(ob.box, s.height, s.width)
            raise FCLMDataError(f"{where}object {i} has neither mask nor box")

        ignore = decode_rle(s.ignore_mask) if s.ignore_mask is not None else None
        targets = []
        for i in ex.target_ids:
            t = obj_mask(i).astype(np.uint8)
            if ignore is not None:
                t[ignore & (t == 0)] = 255
            targets.append(t)
        keys = ([ex.pair_key if ex.task == "dlc" else None] * len(ex.region_ids),
                [ex.pair_key if ex.task == "dlres" else None] * len(ex.target_ids))
        hist = []
        turns = list(ex.history)
        for k in range(0, len(turns) - 1, 2):
            hist.append((turns[k].text, turns[k + 1].text))
        enc = self.encode(image, ex.user, ex.assistant, [obj_mask(i) for i in ex.region_ids], targets,
                          hist, where, keys)
        if self.with_object_masks:
            enc.object_masks = [m for m in (obj_mask(i) for i in range(len(s.objects))) if m.any()]
        return enc

    # ------------------------------------------------------------ batching
    def collate(self, items: list[EncodedExample], padding_side: str = "right") -> dict:
        """Pad and stack encoded examples into the model's keyword arguments."""
        L = max(len(it.input_ids) for it in items)
        B = len(items)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        labels = torch.full((B, L), -100, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, it in enumerate(items):
            n = len(it.input_ids)
            sl = slice(L - n, L) if padding_side == "left" else slice(0, n)
            input_ids[b, sl] = torch.tensor(it.input_ids)
            labels[b, sl] = torch.tensor(it.labels)
            attn[b, sl] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "labels": labels,
            "pixel_values": torch.cat([it.pixel_values for it in items]),
            "image_grid_thw": torch.stack([it.image_grid_thw for it in items]),
            "sam_pixel_values": torch.from_numpy(np.stack([it.sam_pixel_values for it in items])),
            "sam_valid_sizes": torch.tensor([it.sam_valid_size for it in items]),
            "original_sizes": torch.tensor([it.original_size for it in items]),
            "region_masks": [torch.from_numpy(m) for it in items for m in it.region_masks],
            "target_masks": [torch.from_numpy(m) for it in items for m in it.target_masks],
        }
        if any(it.object_masks for it in items):
            batch["object_masks"] = [torch.from_numpy(m) for it in items for m in it.object_masks]
            batch["object_image_index"] = torch.tensor([b for b, it in enumerate(items) for _ in it.object_masks])
        if self.with_local_crops and any(it.region_crops for it in items):
            batch["region_crop_pixel_values"] = torch.from_numpy(np.stack([c for it in items for c in it.region_crops]))
            batch["region_crop_masks"] = torch.from_numpy(np.stack([c for it in items for c in it.region_crop_masks]))
        # latent pairs: a DL-RES [SEG] and the DLC region built from the same object share a key
        rkeys = [k for it in items for k in it.pair_keys_regions]
        skeys = [k for it in items for k in it.pair_keys_segs]
        where = {k: j for j, k in enumerate(rkeys) if k is not None}
        pairs = [(i, where[k]) for i, k in enumerate(skeys) if k is not None and k in where]
        if pairs:
            batch["latent_pairs"] = torch.tensor(pairs, dtype=torch.long)
        return batch

    def __call__(self, examples, padding_side: str = "right") -> dict:
        return self.collate([self.encode_example(ex) for ex in examples], padding_side)

    def decode(self, ids) -> str:
        """Answer text with FCLM tokens kept and chat tokens removed."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        for t in CHAT_TOKENS:
            text = text.replace(t, "")
        return text.strip()
