"""Prometheus metrics of the embedding server, served at ``GET /metrics``.

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so several apps
in one process (tests) never share or clash over counters. Names, all prefixed
``sslpipe_serve_``:

* ``requests_total{path,method,status}``: every HTTP request, by route and status code;
  ``errors_total{path,status}``: those answered with a 4xx or 5xx.
* ``request_duration_seconds{path}``: latency histogram, from the first byte handled
  to the last byte sent.
* ``batch_size``: images per ONNX run (histogram); ``batch_duration_seconds``: its time.
* ``queue_depth``: requests waiting for the model (bounded by ``serve.max_queued_requests``);
  ``queued_images``: their decoded images waiting for a batch.
* ``images_embedded_total``; ``model_swaps_total``: alias moves followed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "sslpipe_serve"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.0, 10.0, 30.0)
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 images
UNMATCHED = "unmatched"  # the path label of requests no route matched: unbounded paths would explode the series


class ServerMetrics:
    """The server's counters, histograms and gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests", ["path", "method", "status"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "HTTP requests answered 4xx or 5xx", ["path", "status"], registry=r)
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "HTTP request latency", ["path"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Images per ONNX run", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_duration_seconds", "Seconds per ONNX run", buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter(f"{PREFIX}_images_embedded", "Images embedded", registry=r)
        self.swaps = Counter(f"{PREFIX}_model_swaps", "Alias moves the server followed", registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for the model", registry=r)
        self.queued_images = Gauge(f"{PREFIX}_queued_images", "Decoded images waiting for a batch", registry=r)

    def watch_queue(self, depth: Callable[[], float], images: Callable[[], float]) -> None:
        """The gauges read the queue when scraped."""
        self.queue_depth.set_function(depth)
        self.queued_images.set_function(images)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(path, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware counting every request (cheaper than an ``@app.middleware`` function).

    Outermost, so answers of the other middleware (a 413 for an oversized upload)
    are counted too; the path label is the matched route's template.
    """

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", UNMATCHED)
            self.metrics.observe_request(path, scope["method"], status, time.perf_counter() - started)
