"""Issue 10 pieces that need no second process: the DataLoader stream, CE at label positions,
fp32 master weights from a bf16 folder, strategy configs and errors, the memory planner."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import write_tiny_train_config


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from fclm.model.builders import build_tiny
    from fclm.train.config import load_train_config
    from fclm.train.data import TrainingStream

    tmp = tmp_path_factory.mktemp("pipe")
    path = write_tiny_train_config(tmp / "c.yaml", tmp / "out", steps=3, grad_accum=2)
    cfg = load_train_config(path)
    model, proc = build_tiny(seed=0)
    return cfg, (model, proc), TrainingStream(cfg, proc, cfg.steps * cfg.global_batch_per_process * 2)


def test_dataloader_gives_the_in_process_micro_batches(stream):
    from fclm.train.dataset import SKIPPED_KEY, micro_batch_loader

    cfg, proc, st = stream
    for rank in (0, 1):
        # the in-process path of the trainer before the DataLoader: micro_batch(step, m, rank, world)
        want = [st.micro_batch(s, m, rank, 2) for s in range(cfg.steps) for m in range(cfg.grad_accum)]
        rng = torch.get_rng_state()
        got = list(micro_batch_loader(st, cfg.steps, cfg.grad_accum, rank, 2, num_workers=2))
        # the global torch RNG (target subsampling in the model, restored on resume) is not touched
        assert torch.equal(rng, torch.get_rng_state())
        assert [b.pop(SKIPPED_KEY) for b in got] == [0] * len(want)
        assert len(got) == len(want) == cfg.steps * cfg.grad_accum
        assert all(_equal(w, g) for w, g in zip(want, got))
        # resume at step 1: the same stream from micro-batch 2 on
        resumed = list(micro_batch_loader(st, cfg.steps, cfg.grad_accum, rank, 2, start_step=1, num_workers=1))
        for b in resumed:
            b.pop(SKIPPED_KEY)
        assert all(_equal(w, g) for w, g in zip(want[cfg.grad_accum:], resumed))
    # ranks see different examples
    assert not _equal(st.micro_batch(0, 0, 0, 2)["input_ids"], st.micro_batch(0, 0, 1, 2)["input_ids"])


def test_ce_at_label_positions_equals_full_logits_ce(stream):
    _, (model, proc), st = stream
    batch = proc.normalize_images(st.micro_batch(0, 0, 0, 1))
    labels = batch["labels"]
    assert (labels != -100).sum() > 0 and (labels == -100).sum() > 0
    with torch.no_grad():
        model.eval()
        full = model(**batch).logits  # eval mode: every position's logits
        model.train()
        torch.manual_seed(0)
        out = model(**batch)
    assert out.logits is None
    # the reference: mean CE over all next-token targets that are not -100, from full logits
    want = F.cross_entropy(full[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    assert float(out.loss_ce) == pytest.approx(float(want), rel=1e-5)


def test_bf16_init_folder_trains_fp32_master_weights(tmp_path):
    from safetensors.torch import load_file

    from fclm.model.builders import build_tiny, save_fclm
    from fclm.train.config import load_train_config
    from fclm.train.trainer import Trainer

    model, proc = build_tiny(seed=0)
    init = tmp_path / "init-bf16"
    save_fclm(model.to(torch.bfloat16), proc, str(init))
    w0 = load_file(str(init / "model.safetensors"))
    assert w0["lm_head.weight" if "lm_head.weight" in w0 else next(iter(w0))].dtype == torch.bfloat16
    # lr 1e-5: AdamW's first step moves every weight by ≈ lr, far below bf16's spacing near 1
    path = write_tiny_train_config(tmp_path / "c.yaml", tmp_path / "run", steps=1, save_every=1,
                                   model={"init": "path", "path": str(init),
                                          "overrides": {"self_recon_weight": 1.0, "latent_weight": 0.0}},
                                   optim={"lr": 1.0e-5, "warmup_steps": 0, "warmup_ratio": 0.0, "schedule": "constant"},
                                   data={"synthetic": {"num_scenes": 20, "seed": 0, "image_size": 128}, "num_workers": 0,
                                         "sources": [{"name": "synthetic", "tasks": ["res"]}]})
    tr = Trainer(load_train_config(path), progress=False)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    final = tr.run()
    w1 = load_file(os.path.join(final, "model.safetensors"))
    norm = "model.language_model.norm.weight"  # ones at init: a bf16 weight could not move by 1e-5
    assert w1[norm].dtype == torch.float32
    moved = (w1[norm] - w0[norm].float()).abs()
    assert 0 < float(moved.max()) < 1e-4


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    from fclm.train.strategies import STRATEGIES, accelerate_config, read_accelerate_config, strategy_of_config

    for s in STRATEGIES:
        path = accelerate_config(s)
        assert strategy_of_config(read_accelerate_config(path)) == s
        cc = load_config_from_file(path)  # accelerate's own parser
        assert str(cc.distributed_type).split(".")[-1] == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(s, "DEEPSPEED")
    fsdp = read_accelerate_config(accelerate_config("fsdp"))["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and "Qwen2_5_VLDecoderLayer" in fsdp["fsdp_transformer_layer_cls_to_wrap"]
    assert read_accelerate_config(accelerate_config("zero3"))["deepspeed_config"]["zero3_save_16bit_model"] is True


def _cli(capsys, *argv):
    from fclm.cli import main

    rc = main(["train", *argv])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture()
def tiny_cfg(tmp_path):
    return write_tiny_train_config(tmp_path / "c.yaml", tmp_path / "out", steps=1)


def test_unknown_strategy_is_one_line(capsys, tiny_cfg):
    rc, err = _cli(capsys, "--config", tiny_cfg, "--strategy", "zero4")
    assert rc == 2 and len(err) == 1 and err[0].startswith("fclm train: error: unknown strategy 'zero4'"), err


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_strategy_without_deepspeed_is_refused(capsys, tiny_cfg, strategy):
    rc, err = _cli(capsys, "--config", tiny_cfg, "--strategy", strategy)
    assert rc == 2 and len(err) == 1 and "needs DeepSpeed" in err[0] and "fclm[deepspeed]" in err[0], err


def test_world_size_mismatch_is_one_line(capsys, tiny_cfg, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, err = _cli(capsys, "--config", tiny_cfg, "--nproc", "3")
    assert rc == 2 and len(err) == 1 and "--nproc 3" in err[0] and "started 2 processes" in err[0], err


def test_memory_plan_3b_and_7b(capsys, tmp_path):
    from fclm.model.builders import dry_run
    from fclm.train.memory_plan import GiB

    cfg_path = os.path.join(os.path.dirname(__file__), "..", "src", "fclm", "configs", "train", "fclm-3b-stage1.yaml")
    stage1 = yaml.safe_load(open(cfg_path))
    from fclm.cli import main

    assert main(["train", "--config", cfg_path, "--strategy", "fsdp", "--gpus", "8", "--gpu-memory", "80", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fclm-3b" in out and "strategy fsdp on 8 GPU(s)" in out and "fits" in out
    from fclm.train.config import load_train_config
    from fclm.train.memory_plan import plan_for_config

    cfg = load_train_config(cfg_path)
    for preset in ("fclm-3b", "fclm-7b"):
        counts = dry_run(preset)  # per module group, counted independently of the planner
        from fclm.model.configuration_fclm import DEFAULT_STAGES

        groups = stage1.get("trainable") or DEFAULT_STAGES["stage1"]
        trainable = sum(counts[g] for g in groups)
        p8 = plan_for_config(cfg, "zero3", 8, 80, preset=preset)
        assert p8["trainable"] == trainable
        assert p8["parts_gib"]["optimizer"] == pytest.approx(8 * trainable / 8 / GiB)
        ddp = plan_for_config(cfg, "ddp", 8, 80, preset=preset)
        assert ddp["parts_gib"]["optimizer"] == pytest.approx(8 * trainable / GiB)
        assert plan_for_config(cfg, "fsdp", 8, 80, preset=preset)["fits"]
    assert not plan_for_config(cfg, "ddp", 8, 80, preset="fclm-7b")["fits"]  # 7.7 B trainable: ≈ 123 GB of state
