import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXTS = [
    "What is the category of <region>? Using only one word or phrase.",
    "Can you provide me with a detailed description of the region in the picture marked by <region>?",
    "What is the red circle in this image? Please output segmentation mask.",
    "Sure, [SEG]. It is [SEG]. circle square triangle star ring red green blue yellow purple orange",
    "A large red striped circle in the upper left, to the left of a blue square.",
] * 4


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(model, processor, folder) of a tiny random FCLM saved to disk."""
    from fclm.model.builders import build_tiny

    out = str(tmp_path_factory.mktemp("tiny") / "model")
    model, proc = build_tiny(out, seed=0, texts=TINY_TEXTS)
    return model, proc, out


def make_sample(h=96, w=128, seed=0):
    """A random image with two rectangle objects and one ellipse."""
    from fclm.data.masks import encode_mask
    from fclm.data.schema import ImageRef, RegionObject, Sample

    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    m1 = np.zeros((h, w), bool)
    m1[10:40, 10:50] = True
    m2 = np.zeros((h, w), bool)
    m2[50:90, 70:120] = True
    yy, xx = np.mgrid[:h, :w]
    m3 = ((yy - 30) / 15) ** 2 + ((xx - 95) / 20) ** 2 <= 1
    objs = [RegionObject(mask=encode_mask(m), category=c, caption=f"a {c} thing")
            for m, c in ((m1, "square"), (m2, "box"), (m3, "circle"))]
    return Sample(id=f"s{seed}", source="test", image=ImageRef(array=img), height=h, width=w, objects=objs)


def write_tiny_train_config(path, out_dir, tasks=(("res", "dlres"), ("roc", "dlc")), **extra):
    """A few-second training config (tiny model, 128-px synthetic scenes) written as YAML."""
    import yaml

    weights = [2] + [1] * (len(tasks) - 1)
    cfg = {
        "stage": "stage1",
        "output_dir": str(out_dir),
        "model": {"init": "tiny", "overrides": {"self_recon_weight": 1.0, "latent_weight": 0.0}},
        "trainable": ["vision_encoder", "llm", "region_extractor", "seg_projector", "mask_decoder",
                      "sam_image_encoder"],
        "data": {"synthetic": {"num_scenes": 50, "seed": 0, "image_size": 128},
                 "sources": [{"name": "synthetic", "tasks": list(t), "weight": w} for t, w in zip(tasks, weights)]},
        "optim": {"lr": 1.0e-3, "warmup_steps": 2, "schedule": "cosine"},
        "per_device_batch": 2, "grad_accum": 1, "log_every": 1, "seed": 0,
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


class TableEncoder:
    """Deterministic fake text encoder for metric tests: a fixed vector per text, L2-normalised."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        v = np.array([self.table[t] for t in texts], dtype=float)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
