"""benchmarks/gpu_infer.py runs end to end on the CPU with --tiny (the GPU run is the same code)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))


def test_gpu_infer_tiny(tmp_path):
    import gpu_infer

    out = tmp_path / "b.json"
    assert gpu_infer.main(["--tiny", "--regions", "1", "2", "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    for b in ("batch_1", "batch_4"):
        assert set(s["decode_ms_per_token"][b]) == {"ours", "ours_static_cache", "plain_generate"}
    assert s["vision_encoder_ms"]["ours"] > 0 and s["vision_encoder_ms"]["transformers_per_window"] > 0
    assert s["sam_crop_ms"]["regions"] == 4 and s["sam_crop_ms"]["ours"] > 0
    assert s["sam_crop_ms"]["crop_128"] > 0 and s["sam_crop_ms"]["image_source"] > 0  # cheaper options
    assert [r["regions"] for r in s["dlc_regions_per_s"]] == [1, 2]
    assert all(r["same_text"] for r in s["dlc_regions_per_s"])  # ours and plain generate agree
    assert all(r["static_cache_same_text"] for r in s["dlc_regions_per_s"])
    assert all(r["ours_crop_128_regions_per_s"] > 0 and r["ours_image_source_regions_per_s"] > 0
               for r in s["dlc_regions_per_s"])
