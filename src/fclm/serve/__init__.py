"""Serving: ``fclm serve`` (HTTP JSON API with dynamic batching) and ``fclm demo`` (browser UI).

See ``docs/serving.md``. Nothing heavy is imported here: FastAPI, uvicorn and torch load when a
server is built (:func:`fclm.serve.app.create_app`).
"""
