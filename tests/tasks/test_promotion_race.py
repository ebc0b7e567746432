"""Registrations at the same time, against a real (SQLite) MLflow registry: the champion ends on the best.

Each registration is what ``register.run`` does to the registry: a new version, its
gate tags, then :func:`tasks.register.maybe_promote`. Interleavings are forced: one
registration pauses at a chosen call while another runs from start to end; or a
turnstile lets one client call through at a time, in an order drawn from a seed;
or threads start together at a barrier. Reading the champion, deciding, then
moving the alias (the rule before registrations could overlap) fails all three.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tasks.gate_metrics import GATE_METRICS
from tasks.promotion import GATE_TAG, tag_value
from tasks.register import CHAMPION, maybe_promote

KNN = GATE_METRICS["knn_top1"]
MARGIN = 0.01
INCUMBENT = 0.50  # the champion before the registrations race
WAIT_S = 30  # a registration takes well under a second; this only keeps a broken test from hanging

Registration = Callable[[Any], tuple[str, bool, str]]
model_names = (f"race-{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One registry for the module (creating its tables takes seconds); each test registers its own model."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registration(name: str, value: float, source: str, version: str | None = None) -> Registration:
    """A registration of a version scoring ``value``: returns its version, whether it ended champion, and why.

    ``version``: one created and tagged already; by default the registration creates its own.
    """

    def register(client: Any) -> tuple[str, bool, str]:
        created = version or str(client.create_model_version(name, source=source).version)
        if version is None:
            tag(client, name, created, value)
        return created, *maybe_promote(client, name, created, KNN, value, MARGIN)

    return register


def tag(client: Any, name: str, version: str, value: float) -> None:
    """The gate tags register sets on a new version."""
    client.set_model_version_tag(name, version, KNN.name, tag_value(value))
    client.set_model_version_tag(name, version, GATE_TAG, KNN.name)


def created(client: MlflowClient, name: str, source: str, value: float) -> str:
    """A version created and tagged before its registration decides."""
    version = str(client.create_model_version(name, source=source).version)
    tag(client, name, version, value)
    return version


def new_model(client: MlflowClient, tmp_path: Path) -> tuple[str, str]:
    """A model whose champion scores ``INCUMBENT``; its name and a source for its versions."""
    name, source = next(model_names), (tmp_path / "artifact").as_uri()
    client.create_registered_model(name)
    registration(name, INCUMBENT, source)(client)
    return name, source


def champion(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, CHAMPION).version)


def in_thread(work: Callable[[], Any]) -> Callable[[], Any]:
    """Starts ``work`` in a thread; the returned function joins it and returns its result (or raises its error)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = work()
        except BaseException as error:  # re-raised in the test's thread
            box["error"] = error

    thread = threading.Thread(target=body)
    thread.start()

    def join() -> Any:
        thread.join(WAIT_S)
        assert not thread.is_alive(), "registration still running"
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


# --- one registration pauses while another runs ------------------------------------------------------


class Pausing:
    """A client that pauses at the first call ``pause_at`` picks (given the calls made so far), until resumed."""

    def __init__(self, client: MlflowClient, pause_at: Callable[[str, tuple, list[str]], bool]) -> None:
        self.client, self.pause_at, self.calls = client, pause_at, []
        self.paused, self.resume = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.paused.is_set() and self.pause_at(name, args, self.calls):
                self.paused.set()
                assert self.resume.wait(WAIT_S)
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def after_reading_the_champion(name: str, args: tuple, calls: list[str]) -> bool:
    return "get_model_version_by_alias" in calls


def before_moving_the_champion(name: str, args: tuple, calls: list[str]) -> bool:
    return name == "set_registered_model_alias" and CHAMPION in args


@pytest.mark.parametrize("pause_at", [after_reading_the_champion, before_moving_the_champion])
@pytest.mark.parametrize(
    ("worse", "better"),
    [(0.60, 0.70), (0.600, 0.605)],  # both beat the champion; the second pair within the margin of each other
    ids=["apart", "within-margin"],
)
def test_the_better_version_stays_champion_when_the_worse_one_writes_last(
    client: MlflowClient, tmp_path: Path, pause_at: Callable, worse: float, better: float
) -> None:
    name, source = new_model(client, tmp_path)
    pausing = Pausing(client, pause_at)
    first = in_thread(lambda: registration(name, worse, source)(pausing))
    assert pausing.paused.wait(WAIT_S)
    # Meanwhile the better version registers from start to end, and is champion...
    second, promoted, reason = registration(name, better, source)(client)
    assert promoted and f"kNN top-1 {better:.4f} > champion v1 {INCUMBENT:.4f}" in reason
    assert champion(client, name) == second
    # ...then the worse one, which read the old champion, resumes and writes last.
    pausing.resume.set()
    version, promoted, reason = first()
    assert champion(client, name) == second
    assert not promoted and f"kNN top-1 {worse:.4f} > champion v1 {INCUMBENT:.4f}" in reason
    assert f"v{second} (kNN top-1 {better:.4f}), registered at the same time" in reason
    if pause_at is before_moving_the_champion:  # it did move the alias to itself, and says so
        assert "promoted, then superseded by" in reason
    else:
        assert "is champion instead" in reason


# --- one client call at a time, in a seeded order ------------------------------------------------------


class Turnstile:
    """Runs registrations in threads, letting one client call through at a time, in an order drawn from ``seed``.

    It picks the next call only once every unfinished registration waits at one, so
    the order depends on the seed alone.
    """

    def __init__(self, client: MlflowClient, seed: int) -> None:
        self.client, self.rng = client, random.Random(seed)
        self.changed = threading.Condition()
        self.waiting: set[str] = set()
        self.done: set[str] = set()
        self.turn: str | None = None

    def run(self, registrations: dict[str, Registration]) -> dict[str, tuple[str, bool, str]]:
        joins = {who: in_thread(self.finishing(who, register)) for who, register in registrations.items()}
        everyone = set(registrations)
        while True:
            with self.changed:
                assert self.changed.wait_for(lambda: self.turn is None and self.waiting | self.done == everyone, WAIT_S)
                if self.done == everyone:
                    break
                self.turn = self.rng.choice(sorted(self.waiting))
                self.changed.notify_all()
        return {who: join() for who, join in joins.items()}

    def finishing(self, who: str, register: Registration) -> Callable[[], tuple[str, bool, str]]:
        def work() -> tuple[str, bool, str]:
            try:
                return register(Stepped(self, who))
            finally:
                with self.changed:
                    self.done.add(who)
                    self.turn = None if self.turn == who else self.turn
                    self.changed.notify_all()

        return work

    def call(self, who: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.changed:
            self.turn = None if self.turn == who else self.turn  # its previous call has returned
            self.waiting.add(who)
            self.changed.notify_all()
            assert self.changed.wait_for(lambda: self.turn == who, WAIT_S)
            self.waiting.discard(who)
        return method(*args, **kwargs)


class Stepped:
    """The client of one registration under a :class:`Turnstile`."""

    def __init__(self, turnstile: Turnstile, who: str) -> None:
        self.turnstile, self.who = turnstile, who

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.turnstile.client, name)
        return lambda *args, **kwargs: self.turnstile.call(self.who, method, *args, **kwargs)


@pytest.mark.parametrize("versions_first", [False, True], ids=["created-racing", "created-before"])
@pytest.mark.parametrize("seed", range(6))
def test_in_any_order_of_calls_the_best_ends_champion(
    client: MlflowClient, tmp_path: Path, seed: int, versions_first: bool
) -> None:
    name, source = new_model(client, tmp_path)
    values = random.Random(seed).sample([0.52, 0.56, 0.60], 3)  # each beats the champion, and the others apart
    versions = {value: created(client, name, source, value) if versions_first else None for value in values}
    registrations = {f"{value}": registration(name, value, source, versions[value]) for value in values}
    results = Turnstile(client, seed).run(registrations)
    best, promoted, reason = results[str(max(values))]
    assert champion(client, name) == best
    assert promoted
    assert "kNN top-1 0.6000 > champion" in reason or reason.startswith("already champion: promoted by a registration")


# --- threads released together ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_registrations_started_together_end_on_the_best(client: MlflowClient, tmp_path: Path, seed: int) -> None:
    name, source = new_model(client, tmp_path)
    values = random.Random(seed).sample([0.51 + 0.02 * i for i in range(6)], 6)
    # Versions made first, so that the registrations race where they decide.
    versions = {value: created(client, name, source, value) for value in values}
    start = threading.Barrier(len(values))

    def racing(value: float) -> Callable[[], tuple[str, bool, str]]:
        def work() -> tuple[str, bool, str]:
            start.wait(WAIT_S)
            return registration(name, value, source, versions[value])(client)

        return work

    joins = {value: in_thread(racing(value)) for value in values}
    results = {value: join() for value, join in joins.items()}
    best, promoted, _ = results[max(values)]
    assert champion(client, name) == best and promoted
