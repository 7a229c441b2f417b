"""benchmarks/gpu_train.py --tiny on the CPU: one fsdp case end to end, through accelerate launch."""
import importlib.util
import json
import os

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_train.py")


def test_gpu_train_tiny_runs_and_reports(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "t.json"
    assert mod.main(["--tiny", "--cases", "fsdp:stage2", "--steps", "2", "--warmup", "1", "--out", str(out),
                     "--timeout", "400"]) == 0
    data = json.loads(out.read_text())
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("SUMMARY ")]
    assert len(line) == 1 and json.loads(line[0][len("SUMMARY "):]) == data
    (r,) = data["results"]
    assert r["ok"] and r["strategy"] == "fsdp" and r["stage"] == "stage2" and r["steps"] == 2
    assert len(r["losses"]) == 3 and all(0 < x < 50 for x in r["losses"])
    assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["data_wait_share"] < 1
    # stage 2 of the tiny model: only the LLM trains, every sample is a DLC + DL-RES pair of one region
    assert r["params"]["llm_train"] > 0 and r["tokens_per_sample"] > 50
    assert r["model_tflops_per_step"] > 0 and r["mfu"] is None  # no MFU without a GPU peak to compare to
