"""Training YAML configs: errors name the key and the file, `--set` overrides apply, shipped
configs load."""
import glob
import os

import pytest
import yaml

import fclm
from fclm.train.config import load_train_config

CONFIG_DIR = os.path.join(os.path.dirname(fclm.__file__), "configs", "train")  # `configs/` links here


def base():
    return {
        "stage": "stage1",
        "output_dir": "out",
        "model": {"init": "tiny"},
        "data": {"synthetic": {"num_scenes": 10, "image_size": 128},
                 "sources": [{"name": "synthetic", "tasks": ["res", "roc"]}]},
        "steps": 5,
    }


def write(tmp_path, cfg, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_minimal_config_defaults(tmp_path):
    path = write(tmp_path, base())
    cfg = load_train_config(path)
    assert cfg.source_file == os.path.abspath(path)
    assert (cfg.steps, cfg.per_device_batch, cfg.grad_accum, cfg.precision) == (5, 2, 1, "no")
    assert cfg.data.sources[0].tasks == ["res", "roc"] and cfg.data.sources[0].weight == 1.0
    assert cfg.optim.schedule == "cosine" and cfg.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize("where,key", [((), "stpes"), (("model",), "int"), (("optim",), "learning_rate"),
                                        (("data",), "source")])
def test_unknown_key_names_key_and_file(tmp_path, where, key):
    cfg = base()
    node = cfg
    for w in where:
        node = node.setdefault(w, {})
    node[key] = 1
    path = write(tmp_path, cfg, "typo.yaml")
    with pytest.raises(ValueError) as e:
        load_train_config(path)
    assert key in str(e.value) and path in str(e.value)


def test_unknown_key_in_a_source_names_it(tmp_path):
    cfg = base()
    cfg["data"]["sources"][0]["wieght"] = 2
    path = write(tmp_path, cfg)
    with pytest.raises(ValueError, match="wieght") as e:
        load_train_config(path)
    assert path in str(e.value) and "sources[0]" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_train_config(str(tmp_path / "nope.yaml"))


def test_missing_file_from_the_cli(tmp_path, capsys):
    from fclm.cli import main

    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("change,match", [
    ({"precision": "fp64"}, "precision"),
    ({"model": {"init": "scratch"}}, "model.init"),
    ({"data": {"sources": []}}, "data.sources is empty"),
    ({"model": {"init": "tiny", "tiny": {"sam_size": 128}}}, r"unknown key\(s\) \['sam_size'\] in model.tiny"),
])
def test_bad_values(tmp_path, change, match):
    cfg = {**base(), **change}
    with pytest.raises(ValueError, match=match):
        load_train_config(write(tmp_path, cfg))


def test_unknown_task_name(tmp_path):
    from fclm.train.data import TrainingStream

    cfg = base()
    cfg["data"]["sources"].append({"name": "synthetic", "tasks": ["res", "segment_everything"]})
    path = write(tmp_path, cfg)
    tc = load_train_config(path)
    with pytest.raises(ValueError, match="segment_everything") as e:
        TrainingStream(tc, processor=None, total_draws=10)
    assert path in str(e.value)


def test_set_overrides_applied(tmp_path):
    path = write(tmp_path, base())
    cfg = load_train_config(path, ["steps=7", "optim.lr=1e-4", "optim.betas=[0.8, 0.9]",
                                   "data.synthetic.num_scenes=3", "model.overrides.latent_weight=0.5",
                                   "precision=bf16", "trainable=[llm]", "output_dir=elsewhere"])
    assert cfg.steps == 7 and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.synthetic == {"num_scenes": 3, "image_size": 128}
    assert cfg.model.overrides == {"latent_weight": 0.5}
    assert cfg.precision == "bf16" and cfg.trainable == ["llm"] and cfg.output_dir == "elsewhere"
    # the file itself is untouched
    assert load_train_config(path).steps == 5


def test_set_override_errors(tmp_path):
    path = write(tmp_path, base())
    with pytest.raises(ValueError, match="lr must be a number"):
        load_train_config(path, ["optim.lr=fast"])
    with pytest.raises(ValueError, match="stepz"):
        load_train_config(path, ["stepz=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_train_config(path, ["steps"])


def test_cli_passes_set_overrides(tmp_path):
    from fclm.cli import build_parser

    path = write(tmp_path, base())
    args = build_parser().parse_args(["train", "--config", path, "--resume", "run", "--set", "steps=3",
                                      "--set", "optim.lr=0.1"])
    assert args.resume == "run"
    cfg = load_train_config(args.config, args.set)
    assert cfg.steps == 3 and cfg.optim.lr == pytest.approx(0.1)


def test_model_path_relative_to_config(tmp_path):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "stage1" / "final").mkdir(parents=True)
    cfg = base()
    cfg["model"] = {"init": "path", "path": "stage1/final"}
    cfg = load_train_config(write(tmp_path / "cfgs", cfg))
    assert cfg.model.path == str(tmp_path / "cfgs" / "stage1" / "final")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))), ids=os.path.basename)
def test_shipped_configs_load(path):
    cfg = load_train_config(path)
    assert cfg.stage in ("stage1", "stage2") and cfg.steps > 0 and cfg.data.sources
    from fclm.data.tasks import BUILDERS

    for src in cfg.data.sources:
        assert all(t in BUILDERS or t == "pair_stage2" for t in src.tasks), src
    if cfg.stage == "stage2":
        assert cfg.data.pair_stage2


def test_wsd_schedule_rates(tmp_path):
    """Warm-up, stable, cosine decay over the last decay_ratio of the steps (values by hand)."""
    import torch

    from fclm.train.trainer import _scheduler

    cfg = base()
    cfg["steps"] = 10
    cfg["optim"] = {"lr": 1.0, "warmup_steps": 2, "schedule": "wsd", "decay_ratio": 0.4}
    cfg = load_train_config(write(tmp_path, cfg))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _scheduler(opt, cfg)
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # steps 0-1 warm up (1/2, 2/2), 2-5 stable, 6-9 decay: 0.5·(1 + cos(π·k/4)), k = 0..3
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8535534, 0.5, 0.1464466]
    assert rates == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("optim,msg", [({"schedule": "warmup"}, "optim.schedule"), ({"schedule": "wsd", "decay_ratio": 0}, "decay_ratio")])
def test_bad_schedule_is_named(tmp_path, optim, msg):
    cfg = base()
    cfg["optim"] = optim
    with pytest.raises(ValueError, match=msg):
        load_train_config(write(tmp_path, cfg))


def test_tiny_input_sizes_reach_model_and_processor(tmp_path):
    """``model.tiny`` sets the tiny model's vision and SAM inputs; a size the encoders cannot take
    is an error that names it."""
    from fclm.train.trainer import build_model

    cfg = base()
    cfg["model"]["tiny"] = {"image_long_side": 84, "sam_image_size": 128}
    model, proc = build_model(load_train_config(write(tmp_path, cfg)))
    assert (proc.image_long_side, proc.sam_image_size) == (84, 128)
    assert model.config.sam_config.vision_config.image_size == 128
    assert model.config.sam_config.prompt_encoder_config.image_size == 128
    for bad, match in (({"sam_image_size": 120}, "sam_image_size must be a multiple of 16"),
                       ({"image_long_side": 100}, "image_long_side must be a multiple of 28")):
        cfg["model"]["tiny"] = bad
        with pytest.raises(ValueError, match=match):
            build_model(load_train_config(write(tmp_path, cfg)))
