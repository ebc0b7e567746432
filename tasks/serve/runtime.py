"""The server's running state: the loaded model, its swaps, the batcher, readiness.

A request captures the model that is current when its images are decoded, is
preprocessed for it and runs on it (:mod:`tasks.serve.batching` never mixes two
models in a batch), so a swap between batches fails no request in flight: the
old session stays alive until the requests prepared for it are answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from ssl_core.onnx_embedder import OnnxEmbedder, preprocess
from tasks.params import ServeParams
from tasks.serve.batching import Batcher
from tasks.serve.inputs import decode_image
from tasks.serve.metrics import ServerMetrics
from tasks.serve.model_source import AliasWatcher, ServedModel, now

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A served model with its onnxruntime session."""

    served: ServedModel
    embedder: OnnxEmbedder
    loaded_at: datetime = field(default_factory=now)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        return self.embedder.embed_arrays(batch)

    def prepare(self, images: list[tuple[str, bytes]]) -> np.ndarray:
        """Decodes and preprocesses (name, bytes) images for this model: (N, 3, S, S); 4xx if one is bad."""
        metadata = self.embedder.metadata
        return np.stack([preprocess(decode_image(data, name), metadata) for name, data in images])

    def describe(self) -> dict[str, Any]:
        served = self.served
        return {
            "uri": served.source,
            "onnx_path": str(served.onnx_path),
            "version": served.version,
            "run_id": served.run_id,
            "lineage": served.lineage,
            "loaded_at": self.loaded_at.isoformat(),
        }


def inference_threads(params: ServeParams) -> int:
    """``serve.inference_threads``, 0 meaning the cores this process may run on (its affinity, not the machine's)."""
    if params.inference_threads:
        return params.inference_threads
    if hasattr(os, "sched_getaffinity"):  # Linux: what taskset allows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_model(served: ServedModel, params: ServeParams) -> LoadedModel:
    return LoadedModel(served, OnnxEmbedder(served.onnx_path, intra_op_threads=inference_threads(params)))


def warm_up(model: LoadedModel, batch_size: int) -> None:
    """Runs one batch of ``batch_size`` blank images: the first run allocates, so the first request need not."""
    size = model.embedder.metadata.image_size
    model.embed_arrays(np.zeros((batch_size, 3, size, size), dtype=np.float32))


class ServerState:
    """What the routes share, in ``app.state.server``: built in the app's lifespan."""

    def __init__(self, model: LoadedModel, params: ServeParams, metrics: ServerMetrics) -> None:
        self.params = params
        self.metrics = metrics
        self.current = model
        self.previous: dict[str, Any] | None = None  # a description only: the old session is freed once idle
        self.switched_at: datetime | None = None
        self.ready = False  # set once the model answered its warm-up batch
        self.warm_up_error: str | None = None
        self.watcher: AliasWatcher | None = None
        self.batcher = Batcher(
            params.max_batch_size,
            params.max_batch_wait_ms / 1000,
            params.max_queued_requests,
            params.decode_threads,
            on_batch=metrics.observe_batch,
        )
        metrics.watch_queue(lambda: self.batcher.waiting_requests, lambda: self.batcher.queued_images)

    async def warm_up(self) -> None:
        """Warms the first model up in a thread, then declares the server ready."""
        try:
            await asyncio.to_thread(warm_up, self.current, self.params.max_batch_size)
        except Exception as error:  # onnxruntime's errors have no common base; readiness reports it
            self.warm_up_error = f"{type(error).__name__}: {error}"
            logger.exception("Warm-up of %s failed: the server stays not ready", self.current.served.source)
            return
        self.ready = True
        logger.info("Ready: %s answered a warm-up batch of %d.", self.current.served.source, self.params.max_batch_size)

    async def install(self, served: ServedModel) -> None:
        """Loads and warms ``served`` up in a thread while the current model serves, then swaps to it."""

        def load_and_warm_up() -> LoadedModel:
            model = load_model(served, self.params)
            warm_up(model, self.params.max_batch_size)
            return model

        model = await asyncio.to_thread(load_and_warm_up)
        # One assignment on the event loop: requests decoded from now on run on the new model.
        self.previous, self.current, self.switched_at = self.current.describe(), model, now()
        self.metrics.swaps.inc()
        logger.info("Now serving %s version %s.", served.source, served.version)
