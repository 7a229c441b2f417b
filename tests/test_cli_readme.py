"""The README's commands and Python snippet are true as written."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_python_snippet_runs_as_written(tiny, monkeypatch, capsys):
    """Exec the README's Python block on the tiny model (generation capped at 4 tokens for speed)."""
    from fclm.infer import decoding
    from fclm.infer.pipeline import FCLMPipeline

    (code,) = re.findall(r"```python\n(.*?)```", readme(), re.S)
    assert 'from_pretrained("fclm-quickstart/model")' in code
    folder = tiny[2]
    original = FCLMPipeline.from_pretrained.__func__
    monkeypatch.setattr(FCLMPipeline, "from_pretrained",
                        classmethod(lambda cls, path=None, **kw: original(cls, folder if path == "fclm-quickstart/model" else path, **kw)))
    base = decoding.GenerationOptions.from_kwargs.__func__

    def capped(cls, b=None, **kw):
        opts = base(cls, b, **kw)
        opts.max_new_tokens = min(opts.max_new_tokens, 4)
        return opts

    monkeypatch.setattr(decoding.GenerationOptions, "from_kwargs", classmethod(capped))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    for name in ("mask1", "mask2", "box", "image", "res"):
        assert name in scope
    assert scope["mask1"].shape == (scope["image"].size[1], scope["image"].size[0])
    assert len(capsys.readouterr().out.splitlines()) >= 4


def test_two_fresh_machine_commands_exist_and_ci_uses_the_test_one():
    text = readme()
    assert "./dev.sh quickstart" in text and "./dev.sh test" in text
    assert "download.pytorch.org/whl/cpu" in text and "download.pytorch.org/whl/cu" in text  # both torch builds
    dev = open(os.path.join(ROOT, "dev.sh")).read()
    assert 'exec "$PY" -m pytest' in dev and 'exec "$VENV/bin/fclm" quickstart' in dev
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "torch==2.13.0" in ci and "exec ./dev.sh test" in ci
    assert os.access(os.path.join(ROOT, "dev.sh"), os.X_OK) and os.access(os.path.join(ROOT, ".ci", "run"), os.X_OK)
