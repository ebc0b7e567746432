"""The dynamic batcher alone, with a fake model whose rows are its inputs: who gets which rows, when batches start."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from tasks.serve.batching import Batcher


class EchoModel:
    """Row i of the output is image i's single value, so each request can check it got its own."""

    def __init__(self, seconds: float = 0.0, gate: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.gate = gate
        self.entered = threading.Event()
        self.batches: list[int] = []

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.seconds)
        self.batches.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :1] * 1.0  # (B, 1)


def images(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1, 1, 1)  # (N, 1, 1, 1) "images"


def batcher(**overrides) -> Batcher:
    settings = {"max_batch_size": 8, "max_batch_wait_s": 0.05, "max_queued_requests": 64, "decode_threads": 2}
    return Batcher(**{**settings, **overrides})


async def started(b: Batcher) -> Batcher:
    b.start()
    return b


def test_concurrent_requests_share_batches_and_each_gets_its_own_rows() -> None:
    model = EchoModel(seconds=0.01)
    observed: list[int] = []

    async def scenario() -> list[np.ndarray]:
        b = await started(batcher(on_batch=lambda size, seconds: observed.append(size)))
        requests = [images(*range(10 * i, 10 * i + 1 + i % 3)) for i in range(24)]
        try:
            answers = await asyncio.gather(*(b.embed(len(r), lambda r=r: (model, r)) for r in requests))
        finally:
            await b.close()
        for request, (used, rows) in zip(requests, answers, strict=True):
            assert used is model
            np.testing.assert_array_equal(rows[:, 0], request.reshape(-1))
        return answers

    asyncio.run(scenario())
    assert sum(model.batches) == sum(1 + i % 3 for i in range(24))
    assert max(model.batches) > 1 and max(model.batches) <= 8
    assert observed == model.batches


def test_a_lone_request_does_not_wait_for_company() -> None:
    model = EchoModel()

    async def scenario() -> float:
        b = await started(batcher(max_batch_wait_s=2.0))
        begun = time.perf_counter()
        await b.embed(1, lambda: (model, images(1)))
        seconds = time.perf_counter() - begun
        await b.close()
        return seconds

    assert asyncio.run(scenario()) < 0.5  # far below the 2 s it may wait when others are decoding


def test_a_batch_waits_for_requests_being_decoded_but_no_longer_than_the_maximum() -> None:
    def slow(model, seconds, value):
        def prepare():
            time.sleep(seconds)
            return model, images(value)

        return prepare

    async def scenario(wait: float, decode: float) -> list[int]:
        model = EchoModel()
        b = await started(batcher(max_batch_wait_s=wait))
        await asyncio.gather(b.embed(1, lambda: (model, images(0))), b.embed(1, slow(model, decode, 1)))
        await b.close()
        return model.batches

    assert asyncio.run(scenario(wait=1.0, decode=0.1)) == [2]  # waited for the second decode
    assert asyncio.run(scenario(wait=0.02, decode=0.3)) == [1, 1]  # but not past the maximum wait


def test_a_large_request_is_split_over_batches_in_order() -> None:
    model = EchoModel()

    async def scenario() -> np.ndarray:
        b = await started(batcher(max_batch_size=4))
        _, rows = await b.embed(10, lambda: (model, images(*range(10))))
        await b.close()
        return rows

    np.testing.assert_array_equal(asyncio.run(scenario())[:, 0], np.arange(10))
    assert model.batches == [4, 4, 2]


def test_a_full_queue_refuses_at_once_and_the_admitted_requests_finish() -> None:
    gate = threading.Event()
    model = EchoModel(gate=gate)

    async def scenario() -> list:
        b = await started(batcher(max_queued_requests=2))
        first = asyncio.create_task(b.embed(1, lambda: (model, images(1))))
        await asyncio.to_thread(model.entered.wait, 5)  # the first is in the model, no longer queued
        queued = [asyncio.create_task(b.embed(1, lambda v=v: (model, images(v)))) for v in (2, 3)]
        while b.waiting_requests < 2:
            await asyncio.sleep(0.005)
        with pytest.raises(asyncio.QueueFull):
            await b.embed(1, lambda: (model, images(4)))
        gate.set()
        answers = await asyncio.gather(first, *queued)
        assert b.waiting_requests == 0 and b.retry_after_s() >= 1
        await b.close()
        return answers

    answers = asyncio.run(scenario())
    assert [float(rows[0, 0]) for _, rows in answers] == [1, 2, 3]


def test_a_request_that_times_out_is_dropped_from_the_queue() -> None:
    gate = threading.Event()
    model = EchoModel(gate=gate)

    async def scenario() -> None:
        b = await started(batcher())
        first = asyncio.create_task(b.embed(1, lambda: (model, images(1))))
        await asyncio.to_thread(model.entered.wait, 5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.embed(3, lambda: (model, images(7, 8, 9))), 0.05)
        gate.set()
        await first
        _, rows = await b.embed(1, lambda: (model, images(5)))  # the batcher went past the dropped job
        assert float(rows[0, 0]) == 5 and b.waiting_requests == 0 and b.queued_images == 0
        await b.close()

    asyncio.run(scenario())
    assert model.batches == [1, 1]  # the timed-out request's 3 images never ran


def test_two_models_never_share_a_batch() -> None:
    old, new = EchoModel(), EchoModel()
    gate = threading.Event()
    blocker = EchoModel(gate=gate)

    async def scenario() -> None:
        b = await started(batcher())
        first = asyncio.create_task(b.embed(1, lambda: (blocker, images(0))))
        await asyncio.to_thread(blocker.entered.wait, 5)
        # Queued behind the blocker: two requests prepared for the old model, then two for the new.
        tasks = [
            asyncio.create_task(b.embed(1, lambda m=m, v=v: (m, images(v))))
            for m, v in [(old, 1), (old, 2), (new, 3), (new, 4)]
        ]
        while b.queued_images < 4:
            await asyncio.sleep(0.005)
        gate.set()
        answers = await asyncio.gather(first, *tasks)
        assert [used for used, _ in answers[1:]] == [old, old, new, new]
        await b.close()

    asyncio.run(scenario())
    assert old.batches == [2] and new.batches == [2]


def test_an_inference_error_reaches_each_request_of_its_batch_and_batching_goes_on() -> None:
    class Failing(EchoModel):
        def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("onnxruntime failed")

    async def scenario() -> None:
        b = await started(batcher())
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            await b.embed(2, lambda: (Failing(), images(1, 2)))
        _, rows = await b.embed(1, lambda: (EchoModel(), images(3)))
        assert float(rows[0, 0]) == 3 and b.waiting_requests == 0
        await b.close()

    asyncio.run(scenario())


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="max_batch_size = 0"):
        batcher(max_batch_size=0)
    with pytest.raises(ValueError, match="max_batch_wait_s = -1"):
        batcher(max_batch_wait_s=-1)
