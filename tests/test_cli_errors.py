"""Every bad input to `fclm` gets one line `fclm CMD: error: ...` on stderr and exit status 2.

(docs/cli.md lists the cases.) Run in-process through fclm.cli.main on the tiny model.
"""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fclm.cli import COMMANDS, DEBUG_ENV, build_parser, main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(d / "img.png")
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 10:40] = 255
    Image.fromarray(m).save(d / "m.png")
    return d


def error_line(capsys, cmd: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("Loading weights", "Writing model"))]
    assert len(lines) == 1 and lines[0].startswith(f"fclm {cmd}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def exit_status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors exit from parse_args, as from the console script
        return e.code


def run_error(capsys, argv, cmd=None) -> str:
    assert exit_status(argv) == 2
    return error_line(capsys, cmd or argv[0])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_model_safetensors(tiny, image, tmp_path, capsys, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny[2], folder)
    st = folder / "model.safetensors"
    if damage == "truncate":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    else:
        st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    for cmd in ("segment", "describe"):
        argv = [cmd, str(image / "img.png")] + (["x"] if cmd == "segment" else ["--mask", str(image / "m.png")])
        line = run_error(capsys, argv + ["--model", str(folder)])
        assert "model.safetensors is corrupted or truncated" in line and str(folder) in line
    line = run_error(capsys, ["eval", "--task", "res", "--model", str(folder), "--data", "synthetic",
                              "--out", str(tmp_path / "ev")])
    assert "model.safetensors is corrupted" in line


def test_safetensors_error_raised_deeper_is_one_line(tiny, image, tmp_path, capsys, monkeypatch):
    """A corrupt file found while loading (not by the pre-check) still gives one line."""
    from safetensors import SafetensorError

    import fclm.infer.cli_infer as cli_infer
    from fclm.model import builders

    monkeypatch.setattr(cli_infer, "check_model_dir", lambda *a, **k: None)

    def broken(*a, **k):
        raise SafetensorError("Error while deserializing header: MetadataIncompleteBuffer")

    monkeypatch.setattr(builders, "load_fclm", broken)
    line = run_error(capsys, ["ground", str(image / "img.png"), "--model", tiny[2]])
    assert "corrupted or truncated" in line and "MetadataIncompleteBuffer" in line


def test_devices(tiny, image, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = run_error(capsys, ["ground", str(image / "img.png"), "--model", tiny[2], "--device", "cuda"])
    assert "--device cuda: CUDA is not available" in line and "--device cpu" in line
    line = run_error(capsys, ["ground", str(image / "img.png"), "--model", tiny[2], "--device", "foo"])
    assert "unknown device 'foo'" in line
    line = run_error(capsys, ["eval", "--task", "res", "--model", tiny[2], "--data", "synthetic", "--out", "x",
                              "--device", "cuda:0"])
    assert "CUDA is not available" in line


@pytest.mark.parametrize("argv, cmd, text", [
    (["segment", "IMG", "x", "--max-new-tokens", "-5"], "segment", "--max-new-tokens: must be at least 1, got -5"),
    (["describe", "IMG", "--box", "1", "2", "3", "--model", "M"], "describe", "--box"),
    (["eval", "--task", "res", "--data", "synthetic", "--out", "o", "--batch", "0"], "eval", "--batch: must be at least 1"),
    (["eval", "--task", "res", "--data", "synthetic", "--out", "o", "--limit", "many"], "eval", "expected a whole number"),
    (["ground", "IMG", "--mask", "m.png"], "ground", "unrecognized arguments: --mask m.png"),
    (["ground", "IMG", "--box", "1", "2", "3", "4"], "ground", "unrecognized arguments: --box"),
    (["data", "check", "--dataset", "refcoco"], "data check", "--dataset needs --root"),
    (["score", "--task", "dlc", "--data", "d", "--pred", "p", "--judge-workers", "-1"], "score", "--judge-workers"),
])
def test_argument_errors(argv, cmd, text, image, capsys):
    argv = [str(image / "img.png") if a == "IMG" else a for a in argv]
    assert text in run_error(capsys, argv, cmd)


@pytest.mark.parametrize("argv, text", [
    (["init"], "give --tiny, --llm and --sam, or --preset"),
    (["init", "--tiny"], "--tiny needs --out DIR"),
    (["init", "--tiny", "--preset", "fclm-3b", "--out", "x"], "choose one of --tiny, --preset, --llm/--sam"),
    (["init", "--llm", "some/dir-that-is-not-here"], "--llm and --sam go together (missing --sam)"),
    (["init", "--preset", "fclm-3b"], "--preset needs --random"),
    (["init", "--preset", "fclm-3b", "--random"], "--preset --random needs --out DIR"),
    (["init", "--tiny", "--random", "--out", "x"], "--random and --dry-run go with --preset"),
    (["init", "--llm", "./no/such/qwen", "--sam", "./no/such/sam.pth", "--out", "x"], "--llm ./no/such/qwen: no such file or folder"),
])
def test_init_misuse(argv, text, capsys):
    line = run_error(capsys, argv)
    assert text in line


def test_init_offline_hub_id(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    line = run_error(capsys, ["init", "--llm", "Qwen/Qwen2.5-VL-3B-Instruct", "--sam", "facebook/sam-vit-huge",
                              "--out", str(tmp_path / "o")])
    assert "--llm Qwen/Qwen2.5-VL-3B-Instruct: not a local folder and not in the Hugging Face cache" in line
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR" in line and "pass --llm DIR" in line


def test_train_offline_and_bad_config(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "train",
                       "fclm-3b-stage2.yaml")
    import yaml

    with open(cfg) as f:
        c = yaml.safe_load(f)
    if c["model"].get("init") != "pretrained":  # stage 2 starts from stage 1's folder: use stage 1
        cfg = cfg.replace("stage2", "stage1")
    line = run_error(capsys, ["train", "--config", cfg])
    assert "model.llm Qwen/Qwen2.5-VL-3B-Instruct" in line and "HF_HUB_OFFLINE=1" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: stage1\nprecision: fp64\n")
    line = run_error(capsys, ["train", "--config", str(bad)])
    assert "precision" in line and "bad.yaml" in line


def test_no_progress_silences_transformers_bars(tiny, image, capsys, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    try:
        assert main(["segment", str(image / "img.png"), "the circle", "--model", tiny[2], "--teacher-forced",
                     "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "Loading weights" not in err and "it/s" not in err, err
    finally:
        hf_logging.enable_progress_bar()
    assert main(["segment", str(image / "img.png"), "the circle", "--model", tiny[2], "--teacher-forced"]) == 0
    assert "Loading weights" in capsys.readouterr().err  # the bars are there without the flag


def test_segment_json_keeps_query_and_answer(tiny, image, capsys):
    assert main(["segment", str(image / "img.png"), "the red circle", "--model", tiny[2], "--teacher-forced",
                 "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == "the red circle"
    assert out["answer"] == "Sure, [SEG]." and out["raw"].startswith("Sure, [SEG]")
    assert len(out["masks"]) == 1


def test_full_mask_warning_is_one_line(tiny, image, tmp_path, capsys):
    full = tmp_path / "full.png"
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(full)
    assert main(["classify", str(image / "img.png"), "--mask", str(full), "--model", tiny[2], "--no-progress",
                 "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fclm classify: warning: region 0 ({full}): the mask covers 100.0 % of the image; if the "
                   f"region is the dark part (a white background), invert the mask"]


def test_unexpected_exception_is_one_line_with_debug_hint(capsys, monkeypatch):
    import fclm.eval.cli_score as cli_score

    def boom(args):
        raise RuntimeError("something broke\nacross lines")

    monkeypatch.setattr(cli_score, "run", boom)  # register() picks it up when main builds the parser
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv = ["score", "--task", "res", "--data", "d", "--pred", "p"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fclm score: error: unexpected RuntimeError: something broke across lines "
                   f"(rerun with {DEBUG_ENV}=1 for the traceback)"]
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="something broke"):
        main(argv)


def test_help_texts_are_plain_and_true():
    parser = build_parser()  # every command real
    subs = parser._subparsers._group_actions[0].choices
    assert set(COMMANDS) <= set(subs)
    for name in COMMANDS:
        text = subs[name].format_help()
        assert "``" not in text and ":mod:" not in text and ":func:" not in text and "`" not in text, name
        assert subs[name].description, f"fclm {name} has no description"
    ground = subs["ground"].format_help()
    assert "--mask" not in ground and "--box" not in ground  # ground takes no regions
    assert "Run FCLM on a benchmark" in subs["eval"].format_help()


def test_image_limit_in_docs_is_the_enforced_one():
    from PIL import Image as PILImage

    from fclm.data.schema import FCLMDataError, MAX_IMAGE_PIXELS
    from fclm.infer.inputs import load_image

    assert MAX_IMAGE_PIXELS == 2 * PILImage.MAX_IMAGE_PIXELS  # PIL refuses files above this anyway
    docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "inference.md")
    text = open(docs).read()
    assert f"{MAX_IMAGE_PIXELS:,}" in text and "16384" not in text
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
    with pytest.raises(FCLMDataError, match=f"above the limit of {MAX_IMAGE_PIXELS}"):
        load_image(np.zeros((side, side), np.uint8))  # refused from its shape, before any conversion
