"""Serving: L2-normalized embeddings over HTTP from an ONNX model (``sslpipe serve``).

``POST /embed`` takes one or more images, as multipart ``files`` or as JSON
``{"images": ["<base64>", ...]}``, and returns ``{"embeddings": [[...], ...], "dim": D,
"count": N, "model": ..., "model_version": ...}``. Concurrent requests share ONNX runs
(dynamic batching); a full queue answers 429 with ``Retry-After``. Operators get
``GET /health`` (as before), ``/health/live``, ``/health/ready``, ``/info`` and
Prometheus ``/metrics``. The model comes from an ONNX file or a registry URI such as
``models:/ssl-embedder@champion``, whose alias is followed when it moves. The server
binds to 127.0.0.1 unless told otherwise.

Modules: :mod:`~tasks.serve.app` (the app and its lifespan), :mod:`~tasks.serve.routes`,
:mod:`~tasks.serve.inputs` (reading requests safely), :mod:`~tasks.serve.batching`,
:mod:`~tasks.serve.runtime` (the loaded model and its swaps),
:mod:`~tasks.serve.model_source` (files, registry versions, alias watching),
:mod:`~tasks.serve.metrics`.
"""

from tasks.serve.app import create_app, serve
from tasks.serve.inputs import decode_image
from tasks.serve.model_source import ServedModel, ServeError, resolve_model

__all__ = ["ServeError", "ServedModel", "create_app", "decode_image", "resolve_model", "serve"]
