"""Server limits and the one error type every endpoint answers with (JSON, OpenAI's error layout)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["ServeLimits", "APIError"]


@dataclass
class ServeLimits:
    """What one server accepts. Past a size limit → 413; a full queue → 429; bad values → 400/422."""

    max_body_bytes: int = 32 * 1024 * 1024  # whole request body (JSON or multipart upload)
    max_image_pixels: int = 4096 * 4096  # width x height of the decoded image
    max_regions: int = 32  # regions per request
    max_text_chars: int = 4000  # user text (prompt, answer, chat message) characters
    max_new_tokens: int = 1024  # the most a request may ask to generate
    max_queue: int = 256  # requests waiting or running; more → 429
    max_batch_size: int = 16  # rows (regions / queries / images) decoded together; 1 = no batching
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company

    def __post_init__(self):
        for k, v in asdict(self).items():
            if v is None or v < (0 if k == "max_wait_ms" else 1):
                raise ValueError(f"limit {k} must be {'>= 0' if k == 'max_wait_ms' else '>= 1'}, got {v}")

    def to_dict(self) -> dict:
        return asdict(self)


class APIError(Exception):
    """An HTTP error with a JSON body ``{"error": {"message", "type", "code", "param"}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
             429: "rate_limit_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "error"),
                          "code": self.code, "param": self.param}}
