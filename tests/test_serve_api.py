"""`fclm serve`'s HTTP API on a tiny model, started on 127.0.0.1 (a free port): every endpoint, every
bad-input class (4xx with a JSON error), auth, limits, and batching of concurrent requests."""
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import TINY_TEXTS, make_sample  # noqa: E402
from fclm.data.masks import decode_rle, encode_mask  # noqa: E402
from fclm.serve.app import ServerThread, create_app, is_loopback  # noqa: E402
from fclm.serve.limits import ServeLimits  # noqa: E402
from fclm.serve.testing import get_json, png_b64, post_json, varied_tiny_pipeline  # noqa: E402

LIMITS = dict(max_regions=6, max_text_chars=300, max_image_pixels=200 * 200, max_body_bytes=400_000,
              max_new_tokens=32, max_batch_size=8, max_wait_ms=150)
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def pipe():
    return varied_tiny_pipeline(seed=0, texts=TINY_TEXTS)


@pytest.fixture(scope="module")
def server(pipe):
    srv = ServerThread(create_app(pipe, ServeLimits(**LIMITS), model_name="tiny")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def scene():
    s = make_sample()
    img = s.image.open()
    masks = [decode_rle(o.mask) for o in s.objects]
    return img, masks, png_b64(img)


def mask_png(m):
    return png_b64(Image.fromarray(m.astype(np.uint8) * 255))


def box_mask(h, w, box):
    m = np.zeros((h, w), bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


def err(status, body, want_status, code):
    assert status == want_status, body
    assert set(body["error"]) == {"message", "type", "code", "param"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def test_loopback_check():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


def test_health(server):
    s, h = get_json(server.url + "/health")
    assert s == 200 and h["status"] == "ok" and h["model"] == "tiny"
    assert h["limits"]["max_regions"] == 6 and "describe" in h["tasks"]


def test_describe_every_region_form_gives_the_same_answer(server, pipe, scene):
    img, masks, b64 = scene
    box = [10, 10, 50, 40]
    m = box_mask(96, 128, box)
    forms = [box, {"box": box}, {"bbox": [10, 10, 40, 30]}, encode_mask(m), {"png": mask_png(m)},
             [10, 10, 50, 10, 50, 40, 10, 40]]
    s, out = post_json(server.url + "/v1/describe", {"image": b64, "regions": forms, "max_new_tokens": 6})
    assert s == 200, out
    texts = [r["text"] for r in out["regions"]]
    want = pipe.describe(img, [m], max_new_tokens=6)[0].text
    assert texts[:5] == [want] * 5 and want  # the polygon rasterises slightly differently
    assert out["image_size"] == [96, 128] and [r["region"] for r in out["regions"]] == list(range(6))


def test_describe_overlay_and_point_region(server, scene):
    img, masks, b64 = scene
    s, out = post_json(server.url + "/v1/describe", {"image": "data:image/png;base64," + b64, "detailed": False,
                                                     "regions": [{"point": [30, 25]}], "max_new_tokens": 4,
                                                     "return_overlay": True})
    assert s == 200, out
    ov = Image.open(io.BytesIO(base64.b64decode(out["overlay_png"])))
    assert ov.size == (128, 96) and len(out["colors"]) == 1
    assert not np.array_equal(np.asarray(ov.convert("RGB")), np.asarray(img))  # something was drawn


def test_point_region_is_the_clicked_object():
    from fclm.serve.schemas import point_region

    arr = np.full((60, 80, 3), 230, np.uint8)
    arr[10:30, 20:50] = (200, 30, 30)
    m = point_region(Image.fromarray(arr), 25, 15)
    assert np.array_equal(m, box_mask(60, 80, [20, 10, 50, 30]))


def test_classify(server, pipe, scene):
    img, masks, b64 = scene
    s, out = post_json(server.url + "/v1/classify", {"image": b64, "regions": [encode_mask(m) for m in masks]})
    assert s == 200, out
    assert out["labels"] == pipe.classify(img, masks) and len(out["regions"]) == 3


def test_segment_teacher_forced_region_in_and_free(server, pipe, scene):
    img, masks, b64 = scene
    s, out = post_json(server.url + "/v1/segment", {"image": b64, "text": "the red circle", "teacher_forced": True})
    assert s == 200, out
    assert out["raw"] == "Sure, [SEG]." and len(out["masks"]) == 1 and out["image_size"] == [96, 128]
    want = pipe.segment(img, "the red circle", teacher_forced=True).masks[0]
    assert np.array_equal(decode_rle(out["masks"][0]), want)
    s, out = post_json(server.url + "/v1/segment", {
        "image": b64, "text": "Please segment the object with the colour of <region>.", "regions": [[70, 50, 120, 90]],
        "teacher_forced": True, "answer": "Sure, [SEG] and [SEG].", "return_overlay": True})
    assert s == 200, out
    assert len(out["masks"]) == 2 and len(out["colors"]) == 2 and out["overlay_png"]
    s, out = post_json(server.url + "/v1/segment", {"image": b64, "text": "the red circle", "max_new_tokens": 5})
    assert s == 200, out
    assert len(out["masks"]) == out["raw"].count("[SEG]")
    assert out["raw"] == pipe.segment(img, "the red circle", max_new_tokens=5).raw


def test_ground(server, pipe, scene):
    img, _, b64 = scene
    s, out = post_json(server.url + "/v1/ground", {"image": b64, "max_new_tokens": 8, "return_overlay": True})
    assert s == 200, out
    want = pipe.ground(img, max_new_tokens=8)
    assert out["raw"] == want.raw and out["caption"] == want.caption and len(out["phrases"]) == len(want.phrases)


def test_multipart_upload(server, pipe, scene, tmp_path):
    img, _, b64 = scene
    boundary = "fclmBoundary7"
    png = base64.b64decode(b64)
    req = json.dumps({"regions": [[10, 10, 50, 40]], "max_new_tokens": 5}).encode()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n").encode() + req + \
        f"\r\n--{boundary}--\r\n".encode()
    s, out = post_json(server.url + "/v1/classify", data=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert s == 200, out
    s2, out2 = post_json(server.url + "/v1/classify", {"image": b64, "regions": [[10, 10, 50, 40]], "max_new_tokens": 5})
    assert out["labels"] == out2["labels"]


def chat_body(b64, text, **kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}}]}],
        **kw}


def test_chat_completions(server, pipe, scene):
    img, masks, b64 = scene
    s, out = post_json(server.url + "/v1/chat/completions",
                       chat_body(b64, "What is in <region>?", regions=[[10, 10, 50, 40]], max_tokens=6))
    assert s == 200, out
    assert out["object"] == "chat.completion" and out["model"] == "tiny"
    ch = out["choices"][0]
    want = pipe.run_grounding([(img, "What is in <region>?", None, [[10, 10, 50, 40]])], max_new_tokens=6)[0]
    assert ch["message"]["role"] == "assistant" and ch["message"]["content"] == want.text
    assert ch["finish_reason"] in ("stop", "length") and len(ch["message"]["masks"]) == len(want.masks)
    s, out = post_json(server.url + "/v1/chat/completions", chat_body(b64, "Hi", stream=True))
    err(s, out, 400, "unsupported")
    body = chat_body(b64, "Hi")
    body["messages"][0]["content"][1]["image_url"]["url"] = "http://127.0.0.1:1/x.png"
    assert "fetches nothing" in err(*post_json(server.url + "/v1/chat/completions", body), 400, "invalid_field")["message"]
    err(*post_json(server.url + "/v1/chat/completions", chat_body(b64, "What is <region>?")), 400,
        "region_count_mismatch")
    err(*post_json(server.url + "/v1/chat/completions", {"messages": []}), 400, "missing_field")
    s, out = get_json(server.url + "/v1/models")
    assert out["data"][0]["id"] == "tiny"


def test_bad_inputs_are_4xx_json_errors(server, scene):
    img, masks, b64 = scene
    u = server.url
    big = png_b64(Image.new("RGB", (300, 300)))
    cases = [
        ("/v1/describe", None, b"{not json", 400, "invalid_json"),
        ("/v1/describe", [1, 2], None, 400, "invalid_json"),
        ("/v1/describe", {"regions": [[0, 0, 5, 5]]}, None, 400, "missing_field"),
        ("/v1/describe", {"image": "%%%", "regions": [[0, 0, 5, 5]]}, None, 400, "invalid_base64"),
        ("/v1/describe", {"image": base64.b64encode(b"not an image").decode(), "regions": [[0, 0, 5, 5]]}, None,
         400, "invalid_image"),
        ("/v1/describe", {"image": b64, "regions": [[0, 0, 5, 5]], "colour": "red"}, None, 400, "unknown_field"),
        ("/v1/describe", {"image": b64}, None, 400, "missing_field"),
        ("/v1/describe", {"image": b64, "regions": []}, None, 400, "invalid_field"),
        ("/v1/describe", {"image": b64, "regions": [{"size": [10, 10], "counts": "3"}]}, None, 400,
         "region_size_mismatch"),
        ("/v1/describe", {"image": b64, "regions": [{"png": mask_png(np.ones((10, 10), bool))}]}, None, 400,
         "region_size_mismatch"),
        ("/v1/describe", {"image": b64, "regions": [[500, 500, 600, 600]]}, None, 400, "invalid_region"),
        ("/v1/describe", {"image": b64, "regions": [[1, 2, 3]]}, None, 400, "invalid_region"),
        ("/v1/describe", {"image": b64, "regions": [{"point": [999, 1]}]}, None, 400, "invalid_region"),
        ("/v1/describe", {"image": b64, "regions": [[0, 0, 5, 5]] * 7}, None, 413, "too_many_regions"),
        ("/v1/describe", {"image": big, "regions": [[0, 0, 5, 5]]}, None, 413, "image_too_large"),
        ("/v1/describe", {"image": b64, "regions": [[0, 0, 5, 5]], "max_new_tokens": 10_000}, None, 400,
         "invalid_field"),
        ("/v1/describe", {"image": b64, "regions": [[0, 0, 5, 5]], "detailed": "yes"}, None, 400, "invalid_field"),
        ("/v1/describe", {"image": b64, "regions": [[0, 0, 5, 5]], "prompt": "no slot"}, None, 400, "invalid_field"),
        ("/v1/segment", {"image": b64, "text": "x" * 301}, None, 413, "text_too_long"),
        ("/v1/segment", {"image": b64}, None, 400, "missing_field"),
        ("/v1/segment", {"image": b64, "text": "the <region>"}, None, 400, "region_count_mismatch"),
        ("/v1/segment", {"image": b64, "text": "a", "prompt_style": "poem"}, None, 400, "invalid_field"),
        ("/v1/describe", None, b"{" + b" " * 500_000 + b"}", 413, "request_too_large"),
        ("/v1/translate", {"image": b64}, None, 404, "unknown_task"),
        ("/nowhere", {}, None, 404, "not_found"),
    ]
    for path, body, raw, status, code in cases:
        s, out = post_json(u + path, body, data=raw)
        e = err(s, out, status, code)
        if code in ("invalid_region", "region_size_mismatch"):
            assert e["param"].startswith("regions[0]"), e
    s, out = post_json(u + "/v1/describe", data=b"x", headers={"Content-Type": "text/plain"})
    err(s, out, 415, "unsupported_media_type")
    s, out = get_json(u + "/v1/describe")
    err(s, out, 405, "method_not_allowed")
    s, out = get_json(u + "/health")
    assert s == 200  # still alive after all that


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, pipe):
    images = [make_sample(seed=k).image.open() for k in range(6)]
    boxes = [[5 + 3 * k, 5 + 2 * k, 60 + 4 * k, 50 + 3 * k] for k in range(6)]
    want = [pipe.describe(im, [b], max_new_tokens=6)[0].text for im, b in zip(images, boxes)]
    assert len(set(want)) > 1  # the answers tell the requests apart
    before = get_json(server.url + "/health")[1]["batching"]
    got = [None] * 6

    def client(k):
        got[k] = post_json(server.url + "/v1/describe", {"image": png_b64(images[k]), "regions": [boxes[k]],
                                                         "max_new_tokens": 6})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert [g[0] for g in got] == [200] * 6
    assert [g[1]["regions"][0]["text"] for g in got] == want
    after = get_json(server.url + "/health")[1]["batching"]
    assert after["jobs"] - before["jobs"] == 6 and after["batches"] - before["batches"] < 6  # some shared a batch


def test_auth(pipe, scene):
    _, _, b64 = scene
    srv = ServerThread(create_app(pipe, ServeLimits(**LIMITS), api_key=KEY)).start()
    try:
        s, out = get_json(srv.url + "/health")
        assert err(s, out, 401, "invalid_api_key")["message"].startswith("missing API key")
        s, out = post_json(srv.url + "/v1/classify", {"image": b64, "regions": [[0, 0, 9, 9]]},
                           headers={"Authorization": "Bearer wrong"})
        err(s, out, 401, "invalid_api_key")
        s, out = post_json(srv.url + "/v1/classify", {"image": b64, "regions": [[0, 0, 9, 9]]},
                           headers={"Authorization": f"Bearer {KEY}"})
        assert s == 200 and len(out["labels"]) == 1
    finally:
        srv.stop()


class SlowPipe:
    """A stand-in pipeline whose describe_many blocks until released (to fill the queue)."""

    max_pixels, batch_size = 0, 1

    def __init__(self):
        self.release = threading.Event()

    def describe_many(self, items, detailed, prompt, **gen):
        from fclm.infer.results import RegionText

        self.release.wait(30)
        return [[RegionText(0, "ok", "ok", "eos")] for _ in items]


def test_queue_full_is_429(scene):
    _, _, b64 = scene
    slow = SlowPipe()
    srv = ServerThread(create_app(slow, ServeLimits(max_queue=2, max_batch_size=1, max_wait_ms=0))).start()
    body = {"image": b64, "regions": [[0, 0, 9, 9]], "max_new_tokens": 2}
    results = []
    try:
        threads = [threading.Thread(target=lambda: results.append(post_json(srv.url + "/v1/describe", body)))
                   for _ in range(2)]
        [t.start() for t in threads]
        t0 = time.monotonic()
        while get_json(srv.url + "/health")[1]["queue"] < 2 and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        s, out = post_json(srv.url + "/v1/describe", body)
        e = err(s, out, 429, "queue_full")
        assert "retry" in e["message"]
        slow.release.set()
        [t.join(30) for t in threads]
        assert sorted(r[0] for r in results) == [200, 200]
    finally:
        slow.release.set()
        srv.stop()


def test_cli_refuses_open_bind_without_key_and_bad_model(tmp_path, capsys, monkeypatch):
    from fclm.cli import main

    monkeypatch.delenv("FCLM_API_KEY", raising=False)
    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("fclm serve: error: refusing to bind 0.0.0.0") and "--api-key" in err_text
    assert err_text.count("\n") == 1
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("fclm demo: error:") and "missing" in err_text and err_text.count("\n") == 1


def test_cli_serve_starts_and_answers(tiny):
    """`fclm serve --port 0` on the saved tiny model: prints its URL, answers /health with the key."""
    _, _, folder = tiny
    p = subprocess.Popen([sys.executable, "-m", "fclm.cli", "serve", "--model", folder, "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "FCLM_API_KEY": KEY})
    try:
        line = p.stdout.readline()
        assert line.startswith("fclm serve: API at http://127.0.0.1:"), (line, p.stderr.read() if p.poll() else "")
        url = line.split(" at ")[1].split("/ ")[0]
        assert get_json(url + "/health")[0] == 401
        s, h = get_json(url + "/health", headers={"Authorization": f"Bearer {KEY}"})
        assert s == 200 and h["model"] == os.path.basename(folder)
    finally:
        p.terminate()
        p.wait(30)
        p.stdout.close()
        p.stderr.close()


def test_demo_examples(pipe):
    srv = ServerThread(create_app(pipe, demo=True, api_key=KEY)).start()
    try:
        with urllib.request.urlopen(srv.url + "/") as f:  # the page itself needs no key
            assert b"fclm demo" in f.read()
        s, ex = get_json(srv.url + "/demo/examples")
        assert s == 200 and len(ex) == 6 and all(e["hint"] for e in ex)
        with urllib.request.urlopen(srv.url + ex[0]["url"]) as f:
            assert Image.open(io.BytesIO(f.read())).size == (256, 256)
        assert get_json(srv.url + "/health")[0] == 401  # the API still does
    finally:
        srv.stop()
