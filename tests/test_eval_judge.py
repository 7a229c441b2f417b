"""The DLC-Bench judge client against a real OpenAI-compatible HTTP server on 127.0.0.1."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fclm.cli import main
from fclm.eval.judge import JudgeClient, JudgeError, chat_completions_url


class FakeJudge:
    """Deterministic chat endpoint. Recognition: "Yes" iff the class word is in the description;
    other questions: "A", except "I am not sure" when the question mentions a zebra."""

    def __init__(self, fail_first=0, fail_code=500):
        self.requests = 0
        self.bodies = []
        self.fail_left = fail_first
        self.fail_code = fail_code
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests += 1
                    judge.bodies.append(body)
                    fail = judge.fail_left > 0
                    judge.fail_left -= 1 if fail else 0
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if fail:
                    self.send_response(judge.fail_code)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                prompt = body["messages"][0]["content"]
                answer = judge.answer(prompt)
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def answer(prompt):
        desc = prompt.split("The description is:\n")[1].split("\n\nFrom the description")[0]
        question = prompt.split("one of the choices:\n")[1]
        if question.startswith("Is it likely"):
            cls = question.split(" or ")[0].split()[-1]
            return "Yes" if cls in desc else "No"
        if question.startswith("echo"):
            return question.split("\n")[0]
        return "I am not sure" if "zebra" in question else "A"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()


def _prompt(q):
    return f"The description is:\nd\n\nFrom the description above, please answer the following question with one of the choices:\n{q}"


def test_url_normalisation():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


def test_concurrency_retry_and_cache(tmp_path):
    cache = tmp_path / "cache.jsonl"
    prompts = [_prompt(f"echo {i}") for i in range(6)]
    with FakeJudge(fail_first=1) as srv:
        c = JudgeClient(srv.url, "judge-x", cache_path=str(cache), workers=4, backoff=0.01)
        assert c.complete_many(prompts) == [f"echo {i}" for i in range(6)]
        assert srv.requests == 7  # six prompts + one retry after the HTTP 500
        assert c.requests_sent == 7
        body = srv.bodies[-1]
        assert body["model"] == "judge-x" and body["temperature"] == 0 and body["max_tokens"] == 300
        # a rerun with the same cache file costs nothing
        c2 = JudgeClient(srv.url, "judge-x", cache_path=str(cache), workers=4)
        assert c2.complete_many(prompts) == [f"echo {i}" for i in range(6)]
        assert srv.requests == 7 and c2.cache_hits == 6
        # another judge model is another cache entry
        JudgeClient(srv.url, "judge-y", cache_path=str(cache)).complete(prompts[0])
        assert srv.requests == 8


def test_429_is_retried_and_400_is_not(tmp_path):
    with FakeJudge(fail_first=2, fail_code=429) as srv:
        c = JudgeClient(srv.url, "m", backoff=0.01)
        assert c.complete(_prompt("echo ok")) == "echo ok"
        assert srv.requests == 3
    with FakeJudge(fail_first=1, fail_code=400) as srv:
        with pytest.raises(JudgeError, match="HTTP 400"):
            JudgeClient(srv.url, "m", backoff=0.01).complete(_prompt("echo ok"))
        assert srv.requests == 1


def test_connection_refused_fails_after_retries():
    with FakeJudge() as srv:
        url = srv.url
    with pytest.raises(JudgeError, match="after 3 attempts"):
        JudgeClient(url, "m", max_retries=2, backoff=0.01, timeout=2).complete("x")


def _dlc_bench(root):
    qa = {
        "1": [{"question": "Color?", "type": "positive", "choices": [["brown", 1], ["black", -1]]},
              {"question": "Collar?", "type": "negative", "choices": [["not mentioned", 1], ["mentioned", -1]]}],
        "2": [{"question": "Fur color?", "type": "positive", "choices": [["brown", 1], ["black", -1]]},
              {"question": "Hat?", "type": "negative", "choices": [["not mentioned", 1], ["mentioned", -1]]}],
        "3": [{"question": "zebra stripes?", "type": "positive", "choices": [["stripes", 1], ["none", -1]]},
              {"question": "Ears?", "type": "positive", "choices": [["pointy", 1], ["floppy", -1]]}],
    }
    root.mkdir()
    (root / "qa.json").write_text(json.dumps(qa))
    (root / "class_names.json").write_text(json.dumps({"1": "dog", "2": "cat", "3": "dog"}))
    return root


def test_fclm_score_dlc_end_to_end(tmp_path, capsys):
    bench = _dlc_bench(tmp_path / "DLC-bench")
    pred = tmp_path / "model_outputs.json"  # DAM's {ann_id: caption} format
    pred.write_text(json.dumps({"1": "A brown dog.", "2": "A brown dog.", "3": "A dog."}))
    out = tmp_path / "dlc.json"
    with FakeJudge(fail_first=1) as srv:
        argv = ["score", "--task", "dlc", "--data", str(bench), "--pred", str(pred), "--out", str(out),
                "--judge-url", srv.url, "--judge-model", "llama", "--judge-workers", "3"]
        assert main(argv) == 0
        first = srv.requests
        assert first == 3 * 3 + 1  # 3 regions x (recognition + 2 questions) + one retried 500
        res = json.loads(out.read_text())
        # region 1: pos 1, neg 1; region 2 ("cat" not recognised): pos min(0, 1) = 0, neg 0;
        # region 3: pos (0 [unparseable] + 1) / 2, no negatives
        assert res["metrics"]["Pos"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)
        assert res["metrics"]["Neg"] == pytest.approx(100 * (1 + 0) / 2)
        assert res["metrics"]["Avg"] == pytest.approx((res["metrics"]["Pos"] + res["metrics"]["Neg"]) / 2)
        assert res["counts"]["unparseable_replies"] == 1 and res["counts"]["not_recognized"] == 1
        assert "| Pos | Neg | Avg |" in capsys.readouterr().out
        # rerun: every reply comes from the cache written beside --out
        assert main(argv) == 0
        assert srv.requests == first
        assert json.loads(out.read_text())["metrics"] == res["metrics"]


def test_fclm_score_dlc_without_judge_is_a_clear_error(tmp_path, capsys):
    bench = _dlc_bench(tmp_path / "DLC-bench")
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"1": "x", "2": "x", "3": "x"}))
    assert main(["score", "--task", "dlc", "--data", str(bench), "--pred", str(pred)]) == 2
    assert "--judge-url" in capsys.readouterr().err


def test_fclm_score_judge_timeout(tmp_path, capsys):
    """--judge-timeout bounds the wait for a judge that accepts connections but never replies."""
    import socket

    bench = _dlc_bench(tmp_path / "DLC-bench")
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"1": "x", "2": "x", "3": "x"}))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        argv = ["score", "--task", "dlc", "--data", str(bench), "--pred", str(pred), "--judge-url", url,
                "--judge-model", "m", "--judge-retries", "0", "--judge-workers", "1", "--judge-timeout", "0.5"]
        assert main(argv) == 2
        assert "fclm score: error:" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:  # refused while parsing, before any request
            main(argv[:-1] + ["0"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("fclm score: error: argument --judge-timeout: must be more than 0") and "Traceback" not in err
    finally:
        silent.close()
