"""The FastAPI app: the model loaded in the lifespan, then warmed up, batched, watched.

Start-up: the ONNX session is created before the server accepts a request (a
broken model fails the start); the warm-up batch runs in the background, and
``/health/ready`` answers 200 once it is done. Requests that arrive meanwhile are
served. When the source is ``models:/<name>@<alias>`` and
``serve.alias_poll_seconds`` > 0, an :class:`~tasks.serve.model_source.AliasWatcher`
follows the alias (:meth:`~tasks.serve.runtime.ServerState.install`).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tasks import layout
from tasks.params import ServeParams
from tasks.serve.metrics import RequestMetrics, ServerMetrics
from tasks.serve.model_source import AliasWatcher, ServedModel, resolve_model, watched_alias
from tasks.serve.routes import embed_router, ops_router
from tasks.serve.runtime import ServerState, load_model

logger = logging.getLogger(__name__)

DESCRIPTION = """L2-normalized image embeddings from an exported ONNX model.

`POST /embed` takes images as multipart `files` or as JSON `{"images": ["<base64>", ...]}`;
concurrent requests are batched together. `GET /health/live`, `GET /health/ready`,
`GET /info` and `GET /metrics` (Prometheus) are for operators."""


def create_app(
    model: ServedModel,
    params: ServeParams = ServeParams(),
    cache_dir: Path = layout.SERVING_CACHE,
    project_dir: Path = Path("."),
) -> FastAPI:
    """The app serving ``model``; ``cache_dir`` and ``project_dir`` matter only when an alias is watched."""
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ServerState(await asyncio.to_thread(load_model, model, params), params, metrics)
        app.state.server = state
        state.batcher.start()
        background = [asyncio.create_task(state.warm_up(), name="warm-up")]
        if watched_alias(model.source) is not None and params.alias_poll_seconds > 0:
            state.watcher = AliasWatcher(model, state.install, cache_dir, params.alias_poll_seconds, project_dir)
            background.append(asyncio.create_task(state.watcher.run(), name="alias-watcher"))
        logger.info("Serving %s (%s) on %s", model.source, model.onnx_path, state.current.embedder.provider)
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await state.batcher.close()

    app = FastAPI(title="SSL embedding server", version="2", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(embed_router)
    app.include_router(ops_router)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def serve(model_source: str, params: ServeParams, cache_dir: Path, project_dir: Path = Path(".")) -> None:
    """Runs the server in the foreground until interrupted."""
    import uvicorn

    app = create_app(resolve_model(model_source, cache_dir, project_dir), params, cache_dir, project_dir)
    uvicorn.run(app, host=params.host, port=params.port, log_level="info", access_log=params.access_log)
