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


def _distinct_images(items: list[EncodedExample]) -> tuple[list[int], list[int]]:
    """First row of each distinct image and each row's image number (see ``collate``): rows share
    an image when their ``image_key`` matches and so do their image tensors."""
    first: list[int] = []
    row_image: list[int] = []
    for b, it in enumerate(items):
        for u, f in enumerate(first):
            o = items[f]
            if it.image_key is not None and o.image_key == it.image_key and _same_tensor(o.pixel_values, it.pixel_values) \
                    and _same_tensor(o.sam_pixel_values, it.sam_pixel_values):
                row_image.append(u)
                break
        else:
            first.append(b)
            row_image.append(len(first) - 1)
    return first, row_image


def _same_tensor(a, b) -> bool:
    if a is b:
        return True
    a, b = (torch.as_tensor(x) for x in (a, b))
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


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
    # reducing_gap: a large downscale first box-reduces by an integer factor (cost of a 12 MP photo
    # ÷ 8), then resizes at ≥ 3× the target size: the same antialiased result to a grey level
    return image.resize((max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))), Image.BILINEAR, reducing_gap=3.0)


def sam_preprocess(image: Image.Image, size: int, normalize: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """SAM input: long side ``size``, normalised, padded bottom-right → ``(3, S, S)``, valid (h, w).

    ``normalize=False``: uint8 pixels, zero padding (:meth:`FCLMProcessor.normalize_images` finishes
    them on the device)."""
    im = resize_long_side(image, size)
    arr = (np.asarray(im, dtype=np.float32) - SAM_MEAN) / SAM_STD if normalize else np.asarray(im, dtype=np.uint8)
    out = np.zeros((size, size, 3), dtype=arr.dtype)
    out[: arr.shape[0], : arr.shape[1]] = arr
    return out.transpose(2, 0, 1), (arr.shape[0], arr.shape[1])


class CropSource:
    """One image prepared for region crops: an image pyramid.

    Level ``k`` is the image downscaled ``2**k`` times by 2×2 averaging, built once per image; a
    region's crop is taken from the coarsest level where its box still spans at least ``size``
    pixels, then resized (bilinear, antialiased, tensor ops) to ``size``×``size``. A crop then costs
    O(``size``²) whatever the image's pixel count, and keeps the antialiasing of a resize from full
    resolution. ``device``: where the crops are made; on an accelerator each used level is uploaded
    once, on the CPU only each crop's window is read from the PIL level.
    """

    def __init__(self, image: Image.Image, size: int, device=None):
        image = image if image.mode == "RGB" else image.convert("RGB")
        self.size = size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._images = [image]
        while max(image.size) >= 4 * size:
            image = image.reduce(2)  # 2×2 box average (PIL's C loop: ~10× faster than avg_pool2d on a CPU)
            self._images.append(image)
        self._levels: dict[int, torch.Tensor] = {}  # uint8 (1, 3, h, w) on the device, made on first use
        self.mean = torch.tensor(SAM_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(SAM_STD, device=self.device).view(1, 3, 1, 1)

    def window(self, k: int, xa: int, ya: int, xb: int, yb: int) -> torch.Tensor:
        """Pixels ``[ya:yb, xa:xb]`` of level ``k`` as uint8 ``(1, 3, h, w)`` on the device."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.array(self._images[k].crop((xa, ya, xb, yb)))).permute(2, 0, 1)[None]
        if k not in self._levels:
            self._levels[k] = torch.from_numpy(np.array(self._images[k])).to(self.device).permute(2, 0, 1)[None]
        return self._levels[k][:, :, ya:yb, xa:xb]

    def crop(self, box: tuple[float, float, float, float]) -> torch.Tensor:
        """Normalised ``(3, S, S)`` crop of ``box`` = (x0, y0, x1, y1) in full-resolution pixels."""
        import torch.nn.functional as F

        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0)
        k = int(np.floor(np.log2(side / self.size))) if side >= 2 * self.size else 0
        k = min(max(k, 0), len(self._images) - 1)
        f = 2 ** k
        w, h = self._images[k].size
        xa, ya = min(int(x0 // f), w - 1), min(int(y0 // f), h - 1)
        xb, yb = max(xa + 1, min(w, -int(-x1 // f))), max(ya + 1, min(h, -int(-y1 // f)))
        out = F.interpolate(self.window(k, xa, ya, xb, yb).float(), size=(self.size, self.size), mode="bilinear",
                            align_corners=False, antialias=True)
        return ((out - self.mean) / self.std)[0]


def crop_box(mask, margin: float, box: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """The mask's box (from its projections, or ``box`` when known) plus ``margin`` of its size on
    each side, clipped to the image."""
    from .region_extractor import mask_box

    m = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
    x0, y0, x1, y1 = box if box is not None else mask_box(m)
    mx, my = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    H, W = m.shape
    return max(0, x0 - mx), max(0, y0 - my), min(W, x1 + mx), min(H, y1 + my)


def crop_mask(mask, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Nearest-neighbour ``(S, S)`` bool crop of ``mask`` (pixel-centre sampling, as PIL's NEAREST):
    only the S² sampled pixels are read."""
    from .region_extractor import take_grid

    m = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
    x0, y0, x1, y1 = box
    idx = torch.arange(size, device=m.device, dtype=torch.float64) + 0.5
    rows = (y0 + (idx * (y1 - y0) / size).floor().long()).clamp(max=y1 - 1)
    cols = (x0 + (idx * (x1 - x0) / size).floor().long()).clamp(max=x1 - 1)
    return take_grid(m, rows, cols).bool()  # two 1-D gathers: far cheaper than m[r, c]


def region_crops(source: "CropSource", masks, margin: float,
                 boxes: list[tuple[int, int, int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops for local aggregation: each mask's box plus ``margin``, image and mask resized to S×S.

    Returns ``(R, 3, S, S)`` SAM-normalised crops and ``(R, S, S)`` bool crop masks, on the
    source's device. Per-region cost does not grow with the image's pixel count (see
    :class:`CropSource`; boxes from the masks' projections).
    """
    S = source.size
    dev = source.mean.device
    crops = torch.empty(len(masks), 3, S, S, device=dev)
    cms = torch.empty(len(masks), S, S, dtype=torch.bool, device=dev)
    for i, m in enumerate(masks):
        box = crop_box(m, margin, boxes[i] if boxes is not None else None)
        crops[i] = source.crop(box)
        cms[i] = crop_mask(m, box, S).to(dev)
    return crops, cms


def region_crop(image: Image.Image, mask: np.ndarray, size: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """One region's crop (see :func:`region_crops`) as numpy ``(3, S, S)`` float32 and ``(S, S)`` bool."""
    c, cm = region_crops(CropSource(image, size), [mask], margin)
    return c[0].numpy(), cm[0].numpy()


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
    image_key: str | None = None  # names the image: rows with one key share its encodings (collate)


class FCLMProcessor:
    """See the module docstring. Build with :meth:`from_tokenizer` or :meth:`from_pretrained`."""

    def __init__(self, tokenizer, image_long_side: int = 1024, sam_image_size: int = 1024,
                 patch_size: int = 14, merge_size: int = 2, with_local_crops: bool = True,
                 crop_margin: float = 0.1, max_length: int = 4096,
                 system_prompt: str = "You are a helpful assistant.", with_object_masks: bool = False,
                 region_crop_size: int | None = None):
        self.tokenizer = tokenizer
        self.token_ids = add_fclm_tokens(tokenizer)
        for t in CHAT_TOKENS:
            if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id):
                raise ValueError(f"tokenizer lacks the chat token {t!r}")
        self.image_long_side, self.sam_image_size = image_long_side, sam_image_size
        self.patch_size, self.merge_size = patch_size, merge_size
        self.with_local_crops, self.crop_margin = with_local_crops, crop_margin
        self.region_crop_size = region_crop_size  # None: sam_image_size (see crop_size)
        self.max_length, self.system_prompt = max_length, system_prompt
        self.with_object_masks = with_object_masks  # set from config.self_recon_scope by the trainer
        self.image_processor = _image_processor(image_long_side, patch_size, merge_size)
        self.pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        keys = ("image_long_side", "sam_image_size", "patch_size", "merge_size", "with_local_crops",
                "crop_margin", "max_length", "system_prompt", "region_crop_size")
        return {k: getattr(self, k) for k in keys}

    @property
    def crop_size(self) -> int:
        """Side of the local-aggregation crops."""
        return self.region_crop_size or self.sam_image_size

    def configure_for(self, config) -> "FCLMProcessor":
        """Make the region inputs the model's config asks for: per-region crops only when local
        aggregation reads crops, at the config's crop size."""
        self.with_local_crops = config.uses_region_crops
        self.region_crop_size = config.region_crop_size
        return self

    def save_pretrained(self, path: str) -> None:
        """Tokenizer files, ``fclm_processor.json`` (our settings) and ``processor_config.json`` (names
        the class, so ``AutoProcessor.from_pretrained`` finds it after ``import fclm``)."""
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, PROCESSOR_FILE), "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        with open(os.path.join(path, "processor_config.json"), "w") as f:
            json.dump({"processor_class": type(self).__name__}, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, **overrides) -> "FCLMProcessor":
        """Load from a saved folder; ``overrides`` replace saved settings (hub keywords that
        ``AutoProcessor`` passes along, such as ``trust_remote_code``, are ignored)."""
        import inspect

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        cfg_path = os.path.join(path, PROCESSOR_FILE)
        kw = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "tokenizer"}
        kw.update({k: v for k, v in overrides.items() if k in known})
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
               pair_keys: tuple[list, list] | None = None, uint8_images: bool = False,
               image_cache: dict | None = None) -> EncodedExample:
        """Encode one conversation about one image (``where`` names it in error messages).

        ``uint8_images``: the image tensors stay uint8 pixels (4× smaller to carry; the Qwen
        patches and the SAM input are normalised on the device by :meth:`normalize_images`).
        ``image_cache``: a dict shared by the examples of one image, which then run the image
        processors once.
        """
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
        cached = image_cache.get(uint8_images) if image_cache is not None else None
        if cached is None:
            resized = resize_long_side(image, self.image_long_side)
            raw = {"do_rescale": False, "do_normalize": False} if uint8_images else {}
            vis = self.image_processor(images=[resized], return_tensors="pt", **raw)
            if uint8_images:  # resized uint8 pixels, patchified: exact integers 0…255
                vis["pixel_values"] = vis["pixel_values"].to(torch.uint8)
            cached = (vis, *sam_preprocess(image, self.sam_image_size, normalize=not uint8_images))
            if image_cache is not None:
                image_cache[uint8_images] = cached
        vis, sam_px, valid = cached
        grid = vis["image_grid_thw"][0]
        n_img = int(grid.prod()) // self.merge_size**2
        ids, labels = self.build_ids(text, answer, n_img, hist)
        if len(ids) > self.max_length:
            raise FCLMDataError(f"{where}conversation is {len(ids)} tokens, above max_length={self.max_length}")
        crops, cmasks = [], []
        if self.with_local_crops and region_masks:
            c, cm = region_crops(CropSource(image, self.crop_size), region_masks, self.crop_margin)
            crops, cmasks = list(c.numpy()), list(cm.numpy())
        rk, sk = pair_keys if pair_keys else ([None] * len(region_masks), [None] * len(target_masks or []))
        return EncodedExample(ids, labels, vis["pixel_values"], grid, sam_px, valid, (H, W), region_masks,
                              crops, cmasks, [np.asarray(t, dtype=np.uint8) for t in (target_masks or [])],
                              list(rk), list(sk))

    def encode_example(self, ex, image: Image.Image | None = None, uint8_images: bool = False,
                       image_cache: dict | None = None) -> EncodedExample:
        """Encode a :class:`fclm.data.schema.Example` (masks decoded from its sample; see
        :meth:`encode` for ``uint8_images`` and ``image_cache``)."""
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
                          hist, where, keys, uint8_images, image_cache)
        enc.image_key = f"{s.source}:{s.id}"
        if self.with_object_masks:
            enc.object_masks = [m for m in (obj_mask(i) for i in range(len(s.objects))) if m.any()]
        return enc

    # ------------------------------------------------------------ batching
    def collate(self, items: list[EncodedExample], padding_side: str = "right", share_images: bool = False) -> dict:
        """Pad and stack encoded examples into the model's keyword arguments.

        ``share_images``: rows with the same ``image_key`` and identical image tensors (e.g. the
        DLC and DL-RES examples of a stage-2 pair) carry their image once: ``pixel_values``,
        ``sam_pixel_values``, ``sam_valid_sizes`` and ``original_sizes`` then hold the U distinct
        images and ``image_index`` ``(B,)`` maps each row to its image (``image_grid_thw`` stays per
        row); the model encodes each distinct image once.
        """
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
        first, row_image = _distinct_images(items) if share_images else (list(range(B)), None)
        images = [items[f] for f in first]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "labels": labels,
            "pixel_values": torch.cat([it.pixel_values for it in images]),
            "image_grid_thw": torch.stack([it.image_grid_thw for it in items]),
            "sam_pixel_values": torch.from_numpy(np.stack([it.sam_pixel_values for it in images])),
            "sam_valid_sizes": torch.tensor([it.sam_valid_size for it in images]),
            "original_sizes": torch.tensor([it.original_size for it in images]),
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
        if row_image is not None:
            batch["image_index"] = torch.tensor(row_image, dtype=torch.long)
        return batch

    def normalize_images(self, batch: dict) -> dict:
        """Finish uint8 image inputs where they are (on the device): ``pixel_values`` (Qwen patches)
        rescaled and normalised with the image processor's mean/std, ``sam_pixel_values`` with SAM's,
        their padding set to 0 from ``sam_valid_sizes``; the same values (to float rounding) as the
        processor's float path. Float inputs are left as they are. Updates and returns ``batch``."""
        pv = batch.get("pixel_values")
        if pv is not None and pv.dtype == torch.uint8:
            ip = self.image_processor
            mean = torch.tensor(ip.image_mean, device=pv.device).view(1, 3, 1)
            std = torch.tensor(ip.image_std, device=pv.device).view(1, 3, 1)
            # a patch row is (C, T, P, P) flattened: normalising per channel commutes with patchifying
            n = pv.shape[0]
            batch["pixel_values"] = ((pv.view(n, 3, -1).float() * ip.rescale_factor - mean) / std).view(n, -1)
        sp = batch.get("sam_pixel_values")
        if sp is not None and sp.dtype == torch.uint8:
            mean = torch.from_numpy(SAM_MEAN).to(sp.device).view(1, 3, 1, 1)
            std = torch.from_numpy(SAM_STD).to(sp.device).view(1, 3, 1, 1)
            hw = batch["sam_valid_sizes"].to(sp.device)
            ar = torch.arange(sp.shape[-1], device=sp.device)
            valid = (ar.view(1, -1, 1) < hw[:, :1, None]) & (ar.view(1, 1, -1) < hw[:, 1:, None])
            batch["sam_pixel_values"] = torch.where(valid[:, None], (sp.float() - mean) / std, 0.0)
        return batch

    def __call__(self, examples=None, padding_side: str = "right", *, images=None, text=None, regions=None,
                 return_tensors: str = "pt"):
        """Two uses.

        * ``processor(examples)``: training batches from :class:`fclm.data.schema.Example` records;
        * ``processor(images=…, text=…, regions=…)``: generation inputs, Hugging Face style, for
          ``model.generate(**inputs)``. ``text`` is the user prompt (one string or a list, one per
          image), with one ``<region>`` per region mask; it is wrapped in the chat layout with the
          generation prompt. ``images``: a PIL image or a list (one per text; one image is shared by
          all texts); ``regions``: per text a list of ``(H, W)`` masks (one text: a plain list).
          Rows are left-padded. Returns a ``BatchFeature`` with ``input_ids``, ``attention_mask``,
          ``mm_token_type_ids``, the image and region tensors, and the SAM inputs that
          :meth:`~fclm.model.FCLMForConditionalGeneration.seg_masks_from_generation` needs.
        """
        if examples is not None:
            if images is not None or text is not None:
                raise TypeError("pass either training examples or images=/text=, not both")
            return self.collate([self.encode_example(ex) for ex in examples], padding_side)
        return self.generation_inputs(images, text, regions, return_tensors)

    def generation_inputs(self, images, text, regions=None, return_tensors: str = "pt"):
        """See :meth:`__call__` (``images=``, ``text=``, ``regions=``)."""
        from transformers import BatchFeature

        if return_tensors != "pt":
            raise ValueError(f"FCLMProcessor returns PyTorch tensors only (return_tensors='pt'), got {return_tensors!r}")
        if text is None or images is None:
            raise TypeError("FCLMProcessor needs images= and text=")
        texts = [text] if isinstance(text, str) else list(text)
        imgs = list(images) if isinstance(images, (list, tuple)) else [images] * len(texts)
        if len(imgs) == 1 and len(texts) > 1:
            imgs = imgs * len(texts)
        if len(imgs) != len(texts):
            raise ValueError(f"{len(imgs)} images for {len(texts)} texts")
        if regions is None:
            regs = [[] for _ in texts]
        elif isinstance(text, str):
            regs = [list(regions)]
        else:
            regs = [list(r or []) for r in regions]
        if len(regs) != len(texts):
            raise ValueError(f"regions: {len(regs)} lists for {len(texts)} texts")
        items = [self.encode(im.convert("RGB") if im.mode != "RGB" else im, t, None,
                             [np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m) for m in r],
                             target_masks=None, where=f"text {i}: " if len(texts) > 1 else "")
                 for i, (im, t, r) in enumerate(zip(imgs, texts, regs))]
        batch = self.collate(items, padding_side="left")
        for k in ("labels", "target_masks"):
            batch.pop(k, None)
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.tokenizer.convert_tokens_to_ids("<|image_pad|>")).int()
        return BatchFeature(batch)

    def batch_decode(self, sequences, prompt_length: int = 0) -> list[str]:
        """Decode ``generate`` output rows (dropping the first ``prompt_length`` ids), like :meth:`decode`:
        answer text up to the first end token, FCLM tokens kept."""
        out = []
        for row in sequences:
            ids = [int(i) for i in row[prompt_length:]]
            for k, i in enumerate(ids):
                if i in (self.im_end_id, self.pad_id):
                    ids = ids[:k]
                    break
            out.append(self.decode(ids))
        return out

    def decode(self, ids) -> str:
        """Answer text with FCLM tokens kept and chat tokens removed."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        for t in CHAT_TOKENS:
            text = text.replace(t, "")
        return text.strip()
