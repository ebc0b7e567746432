"""Real servers for the end-to-end tests: an MLflow tracking server, on SQLite or on a PostgreSQL server.

:func:`mlflow_server` runs ``mlflow server`` on a free local port with its backend
store and ``--artifacts-destination`` in a folder of the test's, and yields where it
answers. :func:`postgres_server` starts Debian's PostgreSQL (``initdb``, then
``postgres``; as the ``postgres`` user when the tests run as root, which PostgreSQL
refuses) with its data in a temporary folder, and yields a SQLAlchemy URL for it.

Where the PostgreSQL server is missing and the tests run as root, it is installed
from Debian's packages first (``apt-get install postgresql``); its Python driver,
psycopg 3 (SQLAlchemy 2.1's default for ``postgresql://``), comes with the dev
extras. Either missing, the test is skipped with the reason, except under
``CI=true``, where it fails (as in tests/browser.py).

Example:
    >>> with postgres_server() as store, mlflow_server(store, tmp_path / "mlflow") as server:
    ...     MlflowClient(server.url).search_experiments()
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.datasets import in_ci
from tests.project import environment, free_port, wait_until_healthy

POSTGRES_USER = "postgres"  # the system user Debian's package creates, who runs the server when we are root
INSTALL_POSTGRES = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]
# Durability buys nothing for a throwaway test database, and costs fsyncs on a shared disk.
NO_DURABILITY = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: where it answers, and where it keeps runs and artifacts."""

    url: str
    backend_store_uri: str
    artifacts: Path  # its --artifacts-destination
    log: Path  # what it printed


@contextmanager
def mlflow_server(backend_store_uri: str, folder: Path, seconds: float = 180) -> Iterator[MlflowServer]:
    """``mlflow server`` with its artifacts under ``folder``, stopped when the block ends.

    One worker: the tests send one request at a time, and every worker is a process
    that imports MLflow on CI's two cores. No job execution (MLflow 3's job runner and
    seven huey consumers, for GenAI jobs the pipeline never submits): measured on the
    2-core machine, they doubled the server's start-up CPU (28 against 12 CPU-seconds)
    and kept 1.1 cores busy while it idled (22 CPU-seconds in 20 s, against 0.1), CPU
    taken from the tests beside it for as long as a module's server runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    artifacts = folder / "artifacts"
    log = folder / "server.log"
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("w") as output:
        server = subprocess.Popen(
            command,
            cwd=folder,
            env={**environment(folder), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(server, f"{url}/health", seconds)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{log.read_text()[-5000:]}") from None
        yield MlflowServer(url, backend_store_uri, artifacts, log)
    finally:
        stop(server)


def postgres_missing() -> str | None:
    """Why no PostgreSQL test can run here (after trying to install the server), or None."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg, MLflow's PostgreSQL driver, is not installed (pip install 'psycopg[binary]')"
    failed = None
    if postgres_bin() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        failed = install_postgres()
    if postgres_bin() is None:
        return "no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql" + (
            f"; installing it failed: {failed}" if failed else ""
        )
    return None


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: on the PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: float(p.parts[-3]))
    return installed[-1].parent if installed else None


def install_postgres() -> str | None:
    """Installs Debian's PostgreSQL from the package registry; returns what went wrong, or None."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], INSTALL_POSTGRES):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} took more than 600 s"
        if result.returncode != 0:
            return f"{' '.join(command)} exited with {result.returncode}: {result.stderr.strip()[-1000:]}"
    return None


@contextmanager
def postgres_server(seconds: float = 60) -> Iterator[str]:
    """A PostgreSQL server on a free local port, its data in a temporary folder; yields its SQLAlchemy URL.

    Skips the calling test when PostgreSQL or its driver is missing, and fails it under ``CI=true``.
    """
    missing = postgres_missing()
    if missing:
        if in_ci():
            pytest.fail(f"{missing} (CI=true: CI must run every test)")
        pytest.skip(missing)
    import psycopg

    as_root = os.geteuid() == 0
    # Not under pytest's tmp_path: its folders are private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="sslpipe-postgres-"))
    if as_root:
        shutil.chown(data, POSTGRES_USER, POSTGRES_USER)
    user = {"user": POSTGRES_USER, "group": POSTGRES_USER} if as_root else {}
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(data)}
    bin_dir = postgres_bin()
    port = free_port()
    log = data / "postgres.log"
    server = None
    try:
        initdb = subprocess.run(
            [bin_dir / "initdb", "-D", data / "db", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            cwd=data,
            env=env,
            capture_output=True,
            text=True,
            **user,
        )
        assert initdb.returncode == 0, f"initdb failed ({initdb.returncode}):\n{initdb.stderr[-3000:]}"
        no_durability = [arg for setting in NO_DURABILITY for arg in ("-c", setting)]
        with log.open("w") as output:  # opened here: the server inherits it, whoever it runs as
            server = subprocess.Popen(
                [bin_dir / "postgres", "-D", data / "db", "-h", "127.0.0.1", "-p", str(port), "-k", data]
                + no_durability,
                cwd=data,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **user,
            )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + seconds
        while True:
            assert server.poll() is None, f"postgres exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, f"postgres on port {port} did not answer within {seconds:g} s"
                time.sleep(0.3)
        yield url
    finally:
        if server is not None:
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
            stop(server, signal.SIGINT, group=False)
        shutil.rmtree(data, ignore_errors=True)


def stop(server: subprocess.Popen, how: int = signal.SIGTERM, group: bool = True, seconds: float = 30) -> None:
    """Signals the server (with ``group``, its whole process group: its workers too); SIGKILL after ``seconds``."""
    send = (lambda sig: os.killpg(server.pid, sig)) if group else server.send_signal
    try:
        send(how)
        server.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


@contextmanager
def prefect_server(home: Path, seconds: float = 180) -> Iterator[str]:
    """A real ``prefect server start`` on a free port, its database under ``home``; yields its API URL."""
    port = free_port()
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**environment(home), "PREFECT_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_healthy(server, f"{url}/health", seconds=seconds)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def served_embeddings(project: Path, model: str, images: list[Path], log: Path, *options: str, **env: str) -> dict:
    """Starts ``sslpipe serve --model model`` in ``project``, POSTs ``images`` to /embed, stops it; the answer's JSON.

    Extra ``options`` go to the command and ``env`` to its environment (e.g. ``MLFLOW_TRACKING_URI``).
    """
    import httpx

    port = free_port()
    with log.open("w") as output:
        server = subprocess.Popen(
            ["sslpipe", "serve", "--model", model, "--port", str(port), *options],
            cwd=project,
            env={**environment(project), **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(server, f"{url}/health", seconds=120)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{log.read_text()[-3000:]}") from None
        response = httpx.post(
            f"{url}/embed", files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images], timeout=60
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert response.status_code == 200, response.text
    return response.json()
