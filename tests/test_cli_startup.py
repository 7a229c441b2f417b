"""`fclm` start-up: --help, argument errors and torch-free commands never import torch/transformers.

Each case runs the console entry point (fclm_cli.main) in a fresh interpreter and reports which
heavy modules were imported; no timing is asserted (start-up times: docs/benchmarks.md, issue 13).
"""
import json
import os
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
HEAVY = ("torch", "transformers", "accelerate")
PROBE = ("import sys, fclm_cli\n"
         "try:\n    rc = fclm_cli.main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
         f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
         "sys.exit(rc if isinstance(rc, int) else 1)\n")


def run_fclm(*argv, env=None, cwd=None):
    """(exit status, stdout without the probe line, stderr, heavy modules imported)."""
    e = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    p = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True,
                       env=e, cwd=cwd, timeout=600)
    out, _, probe = p.stdout.rstrip("\n").rpartition("\n")
    if not probe.startswith("HEAVY="):
        out, probe = p.stdout, "HEAVY=?"
    heavy = [m for m in probe[len("HEAVY="):].split(",") if m]
    return p.returncode, out, p.stderr, heavy


def assert_one_error_line(err: str, cmd: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fclm {cmd}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, cmd, rc", [
    (["--help"], None, 0),
    (["segment", "--help"], None, 0),
    (["init", "--help"], None, 0),
    (["segment", "img.png"], "segment", 2),  # TEXT missing
    (["segment", "img.png", "t", "--max-new-tokens", "-5"], "segment", 2),
    (["describe", "img.png", "--device", "foo"], "describe", 2),
    (["ground", "img.png", "--mask", "m.png"], "ground", 2),
    (["init"], "init", 2),  # usage error found after parsing, still before torch
    (["init", "--tiny", "--preset", "fclm-3b"], "init", 2),
    (["nosuchcommand"], None, 2),
])
def test_help_and_argument_errors_do_not_import_torch(argv, cmd, rc):
    code, out, err, heavy = run_fclm(*argv)
    assert code == rc, err
    assert heavy == [], f"{argv} imported {heavy}"
    if cmd:
        assert_one_error_line(err, cmd)
    elif rc == 0:
        assert out.startswith("usage: fclm") and err == ""


def test_top_level_help_lists_every_command():
    from fclm.cli import COMMANDS

    code, out, _, heavy = run_fclm("--help")
    assert code == 0 and heavy == []
    for name, (_, help_, _) in COMMANDS.items():
        assert name in out and help_.split(" (")[0][:30] in " ".join(out.split())


def test_data_check_is_torch_free(tmp_path):
    from test_data_cli import _paco

    _paco(tmp_path)
    code, out, err, heavy = run_fclm("data", "check", "--dataset", "paco_lvis", "--root", tmp_path)
    assert code == 0, err
    assert "paco_lvis [train]: 1 records" in out
    assert heavy == []


def test_score_text_task_is_torch_free(tmp_path):
    from test_eval_judge import FakeJudge, _dlc_bench

    bench = _dlc_bench(tmp_path / "DLC-bench")
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"1": "A brown dog.", "2": "A brown dog.", "3": "A dog."}))
    with FakeJudge() as srv:
        code, out, err, heavy = run_fclm("score", "--task", "dlc", "--data", bench, "--pred", pred,
                                         "--judge-url", srv.url, "--judge-model", "llama")
    assert code == 0, err
    assert "| Pos | Neg | Avg |" in out
    assert heavy == []


def test_offline_hub_ids_are_one_line_before_torch(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code, _, err, heavy = run_fclm("init", "--llm", "Qwen/Qwen2.5-VL-3B-Instruct", "--sam", "facebook/sam-vit-huge",
                                   "--out", tmp_path / "o", env=env)
    line = assert_one_error_line(err, "init")
    assert code == 2 and heavy == []
    assert "--llm Qwen/Qwen2.5-VL-3B-Instruct" in line and "HF_HUB_OFFLINE=1" in line and "--llm DIR" in line
    repo = os.path.dirname(SRC)
    code, _, err, heavy = run_fclm("train", "--config", os.path.join(repo, "configs", "train", "fclm-3b-stage1.yaml"),
                                   env=env)
    line = assert_one_error_line(err, "train")
    assert code == 2 and heavy == []
    assert "fclm-3b-stage1.yaml: model.llm Qwen/Qwen2.5-VL-3B-Instruct" in line and "--set model.llm=DIR" in line


def test_import_fclm_still_registers_auto_classes():
    code = ("import fclm, transformers\n"
            "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
            "print(CONFIG_MAPPING['fclm'].__name__)")
    e = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=600)
    assert out.stdout.strip() == "FCLMConfig", out.stderr


def test_console_script_is_the_light_entry_point():
    with open(os.path.join(os.path.dirname(SRC), "pyproject.toml")) as f:
        assert 'fclm = "fclm_cli:main"' in f.read()
