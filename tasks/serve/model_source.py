"""Where the served model comes from: an ONNX file, or a version of the MLflow registry.

``models:/<name>@<alias>`` and ``models:/<name>/<version>`` are resolved to a version
number first, then that exact version is downloaded into ``<cache>/<name>/<version>/``:
the alias may move in between without mixing two versions' files. The version's
lineage tags (written by the register stage) come along, for ``GET /info``.

:class:`AliasWatcher` polls where an alias points and hands each new version to the
server, which loads, warms up and swaps to it (:mod:`tasks.serve.app`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tasks.errors import UserError

logger = logging.getLogger(__name__)

MODELS_PREFIX = "models:/"
# Version tags of the register stage that say what the model is and how it was judged.
LINEAGE_TAGS = ("git_commit", "dataset_manifest_sha256", "params_hash", "gate_metric", "gate_value")


class ServeError(UserError):
    """The model to serve cannot be found; the message says what to do."""


@dataclass(frozen=True)
class ServedModel:
    """Which model to serve: an ONNX path and where it came from (file or registry URI).

    ``version``, ``run_id`` and ``tags`` are the registry's, for a ``models:/`` source.
    """

    onnx_path: Path
    source: str
    version: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def lineage(self) -> dict[str, str]:
        return {key: self.tags[key] for key in LINEAGE_TAGS if key in self.tags}


def resolve_model(source: str, cache_dir: Path, project_dir: Path = Path(".")) -> ServedModel:
    """An ONNX file as is, or the version a ``models:/`` URI names, downloaded from the MLflow registry."""
    if source.startswith(MODELS_PREFIX):
        from tasks.model_uris import resolve_version  # MLflow only for registry sources

        return download_version(source, resolve_version(source, project_dir), cache_dir, project_dir)
    path = Path(source)
    if not path.is_file():
        raise ServeError(f"No ONNX model at {source}: export one (`sslpipe export`) or pass models:/<name>@<alias>.")
    return ServedModel(path, source)


def download_version(source: str, version, cache_dir: Path, project_dir: Path = Path(".")) -> ServedModel:
    """The ONNX file of one registered ``version`` (an MLflow ModelVersion), in a folder of its own."""
    from tasks.model_uris import download_onnx, parse_models_uri

    name, _, _ = parse_models_uri(source)
    pinned = f"{MODELS_PREFIX}{name}/{version.version}"
    path = download_onnx(pinned, cache_dir / name / str(version.version), project_dir)
    return ServedModel(path, source, str(version.version), version.run_id, dict(version.tags))


def watched_alias(source: str) -> str | None:
    """The alias of a ``models:/<name>@<alias>`` source, None for a file or a fixed version."""
    if not source.startswith(MODELS_PREFIX):
        return None
    from tasks.model_uris import parse_models_uri

    return parse_models_uri(source)[1]


def now() -> datetime:
    return datetime.now(timezone.utc)


class AliasWatcher:
    """Polls the registry every ``interval_s`` and installs the version an alias moved to.

    Args:
        served: the model served now, from ``models:/<name>@<alias>``.
        install: loads, warms up and swaps to a downloaded version; awaited, so one
            move is followed before the next poll.
        cache_dir: where versions are downloaded.
        interval_s: seconds between polls.
        project_dir: the project whose MLflow store is used without ``MLFLOW_TRACKING_URI``.
    """

    def __init__(
        self,
        served: ServedModel,
        install: Callable[[ServedModel], Awaitable[None]],
        cache_dir: Path,
        interval_s: float,
        project_dir: Path = Path("."),
    ) -> None:
        if watched_alias(served.source) is None:
            raise ValueError(f"{served.source}: only a models:/<name>@<alias> source can be watched")
        self.source = served.source
        self.version = served.version
        self.install = install
        self.cache_dir = cache_dir
        self.interval_s = interval_s
        self.project_dir = project_dir
        self.last_checked: datetime | None = None
        self.last_error: str | None = None

    async def run(self) -> None:
        """Polls until cancelled; a registry that fails to answer is logged and asked again next time."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> bool:
        """One poll: installs the alias's version if it moved. Returns whether it did."""
        from tasks.model_uris import resolve_version

        try:
            version = await asyncio.to_thread(resolve_version, self.source, self.project_dir)
            self.last_checked = now()
            if str(version.version) == self.version:
                self.last_error = None
                return False
            logger.info("%s moved from version %s to %s: loading it.", self.source, self.version, version.version)
            served = await asyncio.to_thread(download_version, self.source, version, self.cache_dir, self.project_dir)
            await self.install(served)
        except Exception as error:  # the registry, the download or the new model: whatever fails,
            # the server goes on with the version it has, and the next poll tries again.
            self.last_error = f"{type(error).__name__}: {error}"
            logger.warning("Checking %s failed, still serving version %s: %s", self.source, self.version, error)
            return False
        self.version = served.version
        self.last_error = None
        return True

    def describe(self) -> dict:
        return {
            "alias": watched_alias(self.source),
            "poll_seconds": self.interval_s,
            "last_checked": self.last_checked.isoformat() if self.last_checked else None,
            "last_error": self.last_error,
        }
