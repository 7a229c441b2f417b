"""Judge-LLM client for DLC-Bench: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

The reference judge (DAM) is Llama-3.1-8B-Instruct served by vLLM, queried with temperature 0,
``max_tokens`` 300, ``top_p`` 1 and zero frequency/presence penalties; this client sends exactly
that. Standard library only (``urllib``):

* requests run concurrently (a thread pool of ``workers``);
* connection errors, timeouts, HTTP 429 and 5xx are retried with exponential back-off
  (``backoff * 2**attempt`` seconds, honouring ``Retry-After``), other HTTP errors fail at once;
* every reply is cached on disk (JSON lines, one ``{"key", "model", "reply"}`` per line, appended
  as replies arrive) under ``key = sha256(model, messages, sampling parameters)``, so a rerun — or
  a run resumed after a crash — sends no request that was already answered.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

API_KEY_ENV = "FCLM_JUDGE_API_KEY"
RETRY_STATUS = {408, 409, 425, 429}


class JudgeError(RuntimeError):
    """The judge endpoint failed (after retries) or answered something that is not a chat completion."""


def chat_completions_url(url: str) -> str:
    """Normalise ``http://host:port``, ``…/v1`` or ``…/v1/chat/completions`` to the full endpoint."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    if u.endswith("/v1"):
        return u + "/chat/completions"
    return u + "/v1/chat/completions"


class JudgeClient:
    """Chat-completion client with concurrency, retries and an on-disk reply cache.

    >>> judge = JudgeClient("http://localhost:9100/v1", "meta-llama/Meta-Llama-3.1-8B-Instruct",
    ...                     cache_path="judge_cache.jsonl")          # doctest: +SKIP
    >>> judge.complete_many(["prompt 1", "prompt 2"])                  # doctest: +SKIP
    """

    def __init__(self, url: str, model: str, *, cache_path: str | None = None, workers: int = 8,
                 max_retries: int = 5, backoff: float = 1.0, timeout: float = 120.0,
                 temperature: float = 0.0, max_tokens: int = 300, api_key: str | None = None) -> None:
        self.url = chat_completions_url(url)
        self.model = model
        self.workers = max(1, int(workers))
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.params = {"temperature": temperature, "max_tokens": max_tokens, "top_p": 1,
                       "frequency_penalty": 0, "presence_penalty": 0}
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.cache_path = cache_path
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests actually made (retries included)
        self.cache_hits = 0
        if cache_path and os.path.exists(cache_path):
            self._load_cache(cache_path)

    # -- cache ------------------------------------------------------------------------------
    def _load_cache(self, path: str) -> None:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    self._cache[rec["key"]] = rec["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    # a line cut short by a crash: ignore it, the request is simply re-sent
                    continue

    def _store(self, key: str, reply: str) -> None:
        with self._lock:
            self._cache[key] = reply
            if self.cache_path:
                d = os.path.dirname(os.path.abspath(self.cache_path))
                os.makedirs(d, exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "model": self.model, "reply": reply}) + "\n")

    def cache_key(self, messages: Sequence[dict]) -> str:
        blob = json.dumps({"model": self.model, "messages": list(messages), **self.params},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # -- HTTP ------------------------------------------------------------------------------
    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * (2 ** attempt)
            with self._lock:
                self.requests_sent += 1
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as e:
                    raise JudgeError(f"judge at {self.url} answered non-JSON: {raw[:200]!r}") from e
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
                if e.code < 500 and e.code not in RETRY_STATUS:
                    raise JudgeError(f"judge at {self.url} returned HTTP {e.code}: {detail}") from e
                last = JudgeError(f"HTTP {e.code}: {detail}")
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after:
                    try:
                        delay = max(delay, float(retry_after))
                    except ValueError:
                        pass
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = e
            if attempt < self.max_retries:
                time.sleep(delay)
        raise JudgeError(f"judge at {self.url} failed after {self.max_retries + 1} attempts: {last}")

    def chat(self, messages: Sequence[dict]) -> str:
        """One chat completion (cached); returns the reply text ('' when the reply has no content)."""
        key = self.cache_key(messages)
        with self._lock:
            if key in self._cache:
                self.cache_hits += 1
                return self._cache[key]
        body = json.dumps({"model": self.model, "messages": list(messages), **self.params}).encode("utf-8")
        data = self._post(body)
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise JudgeError(f"judge at {self.url} answered without choices[0].message: {str(data)[:300]}") from e
        reply = content if isinstance(content, str) else ""
        self._store(key, reply)
        return reply

    def complete(self, prompt: str) -> str:
        """Reply to one user prompt."""
        return self.chat([{"role": "user", "content": prompt}])

    def complete_many(self, prompts: Sequence[str]) -> list[str]:
        """Replies to many user prompts, in order, ``workers`` at a time."""
        prompts = list(prompts)
        if self.workers == 1 or len(prompts) <= 1:
            return [self.complete(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.complete, prompts))

    __call__ = complete_many
