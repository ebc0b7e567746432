"""Dynamic batching: concurrent requests share one ONNX run.

A request is admitted while fewer than ``max_queued_requests`` wait for the model
(else :class:`asyncio.QueueFull`, which the server answers with 429). Its images
are decoded and preprocessed in a thread pool, off the event loop and while the
model runs; the result is queued as a job: its rows, and the model they were
prepared for. One batcher task takes jobs from the head of the queue, up to
``max_batch_size`` rows (a larger request is split over batches, a batch never mixes
models), runs them in one call on the single inference thread (onnxruntime releases
the GIL), and gives each job its own rows.

When a batch starts (the light-load policy): at once when it is full, or when no
request is being decoded; otherwise it waits for those, at most ``max_batch_wait``
after its oldest job was queued. A lone request never waits; under load, batches
form by themselves, because requests queue while the model is busy.

Example::

    batcher = Batcher(max_batch_size=32, max_batch_wait_s=0.005, max_queued_requests=128, decode_threads=2)
    batcher.start()
    model, rows = await batcher.embed(count=2, prepare=lambda: (model, arrays))  # rows: (2, D)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class Model(Protocol):
    """What the batcher runs: (N, 3, S, S) preprocessed images -> (N, D) rows."""

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray: ...


# Decodes and preprocesses a request's images in a decode thread: the model they are
# prepared for, and their (N, 3, S, S) arrays. What it raises reaches the caller.
Prepare = Callable[[], tuple[Model, np.ndarray]]
# Called after each batch: its size in images and its inference time in seconds.
BatchObserver = Callable[[int, float], None]


@dataclass(eq=False)
class _Job:
    model: Model
    arrays: np.ndarray  # (n, 3, S, S)
    future: asyncio.Future
    queued_at: float  # loop time
    taken: int = 0  # rows handed to batches so far
    rows: list[np.ndarray] = field(default_factory=list)  # their embeddings, in order

    @property
    def remaining(self) -> int:
        return len(self.arrays) - self.taken


class Batcher:
    """Admits, decodes, queues and batches embedding requests; see the module docstring.

    Args:
        max_batch_size: rows in one model run.
        max_batch_wait_s: longest a batch that is not full waits for requests being decoded.
        max_queued_requests: requests admitted and not yet handed to the model in full.
        decode_threads: threads running each request's ``prepare``.
        on_batch: told each batch's size and inference seconds (metrics).

    Raises:
        ValueError: a size below 1 or a negative wait.
    """

    def __init__(
        self,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_queued_requests: int,
        decode_threads: int,
        on_batch: BatchObserver | None = None,
    ) -> None:
        for name, value in [
            ("max_batch_size", max_batch_size),
            ("max_queued_requests", max_queued_requests),
            ("decode_threads", decode_threads),
        ]:
            if value < 1:
                raise ValueError(f"{name} = {value}: must be >= 1")
        if max_batch_wait_s < 0:
            raise ValueError(f"max_batch_wait_s = {max_batch_wait_s}: must be >= 0")
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.max_queued_requests = max_queued_requests
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        # One thread: batches run one after another, so a model swap falls between two.
        self._inference_pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._queue: deque[_Job] = deque()
        self._waiting = 0  # admitted requests not yet handed to the model in full
        self._decoding = 0  # of those, requests still in their decode thread
        self._queued_rows = 0  # rows queued and not yet in a batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._seconds_per_image = 0.0  # moving average, for Retry-After

    @property
    def waiting_requests(self) -> int:
        """Requests admitted and not yet handed to the model (the bounded queue depth)."""
        return self._waiting

    @property
    def queued_images(self) -> int:
        """Decoded images waiting for a batch."""
        return self._queued_rows

    def retry_after_s(self) -> int:
        """Whole seconds until the queued images are likely embedded (at least 1)."""
        return max(1, math.ceil(self._queued_rows * self._seconds_per_image))

    def start(self) -> None:
        """Starts the batcher task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Stops batching; requests still queued are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._queue:
            job.future.cancel()
        self._queue.clear()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._inference_pool.shutdown(wait=False, cancel_futures=True)

    def run_alone(self, model: Model, arrays: np.ndarray) -> asyncio.Future:
        """Runs ``arrays`` on ``model`` on the inference thread, outside the queue (a warm-up)."""
        return asyncio.get_running_loop().run_in_executor(self._inference_pool, model.embed_arrays, arrays)

    async def embed(self, count: int, prepare: Prepare) -> tuple[Model, np.ndarray]:
        """The (count, D) rows of one request, and the model that produced them.

        Raises:
            asyncio.QueueFull: ``max_queued_requests`` requests are waiting already.
        """
        if self._waiting >= self.max_queued_requests:
            raise asyncio.QueueFull(f"{self._waiting} requests are waiting for the model")
        loop = asyncio.get_running_loop()
        self._waiting += 1
        self._decoding += 1
        job = None
        try:
            try:
                model, arrays = await loop.run_in_executor(self._decode_pool, prepare)
            finally:
                self._decoding -= 1
                self._wake.set()  # a batch waiting for this decode may start
            if len(arrays) != count:
                raise ValueError(f"prepare gave {len(arrays)} images for a request of {count}")
            job = _Job(model, arrays, loop.create_future(), loop.time())
            self._queue.append(job)
            self._queued_rows += count
            self._wake.set()
            await job.future  # cancelled with this task (a timeout): the batcher drops the job
            return model, job.rows[0] if len(job.rows) == 1 else np.concatenate(job.rows)
        finally:
            if job is None:  # never queued: failed or cancelled while decoding
                self._waiting -= 1

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._wait_for_decoding()
            model, parts = self._take_batch()
            if parts:
                await self._run_batch(model, parts)

    async def _wait_for_decoding(self) -> None:
        """Holds a batch that is not full while requests are being decoded, up to the maximum wait."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].queued_at + self.max_batch_wait_s
        while self._queued_rows < self.max_batch_size and self._decoding > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            # No await between the checks and clear(): nothing can set the event unseen.
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> tuple[Model | None, list[tuple[_Job, int, int]]]:
        """Up to max_batch_size rows from the head of the queue, all for one model: (job, start, stop) each."""
        model, parts, room = None, [], self.max_batch_size
        while self._queue and room:
            job = self._queue[0]
            if job.future.done():  # its request timed out, or an earlier part failed
                self._drop_head(job)
                continue
            if model is None:
                model = job.model
            elif job.model is not model:
                break  # swapped models never share a batch
            rows = min(room, job.remaining)
            parts.append((job, job.taken, job.taken + rows))
            job.taken += rows
            room -= rows
            self._queued_rows -= rows
            if job.remaining == 0:
                self._queue.popleft()
                self._waiting -= 1
        return model, parts

    def _drop_head(self, job: _Job) -> None:
        self._queue.popleft()
        self._queued_rows -= job.remaining
        self._waiting -= 1

    async def _run_batch(self, model: Model, parts: list[tuple[_Job, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        slices = [job.arrays[start:stop] for job, start, stop in parts]
        batch = slices[0] if len(slices) == 1 else np.concatenate(slices)  # (B, 3, S, S)
        started = loop.time()
        try:
            embeddings = await loop.run_in_executor(self._inference_pool, model.embed_arrays, batch)  # (B, D)
        except Exception as error:  # each request of the batch gets it; the batcher goes on
            logger.exception("Inference failed on a batch of %d images", len(batch))
            for job, _, _ in parts:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        seconds = loop.time() - started
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / len(batch)
        self._on_batch(len(batch), seconds)
        offset = 0
        for job, start, stop in parts:
            job.rows.append(embeddings[offset : offset + stop - start])
            offset += stop - start
            if stop == len(job.arrays) and not job.future.done():
                job.future.set_result(None)
