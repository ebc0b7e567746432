"""The pipeline's MLflow run, live from the first training step.

The pretrain stage opens the run: its configuration as params, then loss and
learning rate every ``monitor.log_every_steps`` steps, the epoch's mean loss,
embedding spread and kNN monitor (:mod:`ssl_core.knn_monitor`) after every
epoch, and MLflow's system metrics (CPU, memory, GPU) while it trains, so the
MLflow UI shows the run as it goes. The training figure is logged as a figure.
The run's id goes into the model folder (``mlflow_run.json``), and the register
stage continues the same run, adding the evaluation, curation counts and the
model: one run per pipeline execution, with the registered version linked to it.

Tracking never stops training: when the tracking server cannot be reached, or
fails midway, the stage warns once and trains on, and the register stage starts
a run of its own.

Metric names: ``step_loss``, ``step_lr`` (step = optimizer step); ``train_loss``,
``lr``, ``embedding_std``, ``epoch_seconds``, ``knn_top1_monitor`` (step = epoch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from matplotlib.figure import Figure

from tasks.mlflow_setup import connect, ensure_experiment, tracking_uri
from tasks.params import MonitorParams

if TYPE_CHECKING:  # for hints only: register reads run references without the training engine
    from ssl_core.engine import EpochStats, StepInfo

logger = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
# Run tags: which training this run holds, and (set by register) the version made from it.
ROLE_TAG = "ssl.role"
REGISTERED_TAG = "ssl.registered_version"


@dataclass(frozen=True)
class RunReference:
    """Where a training run was tracked, as ``mlflow_run.json`` records it."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    @classmethod
    def read(cls, model_dir: Path) -> RunReference | None:
        path = model_dir / RUN_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def write(self, model_dir: Path) -> None:
        (model_dir / RUN_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")


class LiveRun:
    """Logs a training run's progress to its MLflow run; every call is a no-op once tracking failed."""

    def __init__(self, reference: RunReference | None, log_every_steps: int):
        self.reference, self.log_every_steps = reference, log_every_steps

    @property
    def active(self) -> bool:
        """Whether the run is being tracked: false if the server could not be reached or failed midway."""
        return self.reference is not None

    def on_step(self, info: StepInfo) -> None:
        step = info.epoch * info.steps_per_epoch + info.step_in_epoch + 1
        if step % self.log_every_steps == 0:
            self._log({"step_loss": info.loss, "step_lr": info.lr}, step)

    def on_epoch_end(self, stats: EpochStats, knn_top1: float | None = None) -> None:
        metrics = {
            "train_loss": stats.loss,
            "lr": stats.lr,
            "embedding_std": stats.embedding_std,
            "epoch_seconds": stats.seconds,
        }
        if knn_top1 is not None:
            metrics["knn_top1_monitor"] = knn_top1
        self._log(metrics, stats.epoch)

    def log_figure(self, figure: Figure, path: str) -> None:
        self._call("log the figure", lambda mlflow: mlflow.log_figure(figure, path))

    def _log(self, metrics: dict[str, float], step: int) -> None:
        # Asynchronous: a slow server never holds up a training step.
        self._call("log metrics", lambda mlflow: mlflow.log_metrics(metrics, step=step, synchronous=False))

    def _call(self, what: str, action) -> None:
        if not self.active:
            return
        try:
            action(mlflow)
        except Exception as error:  # noqa: BLE001 - a tracking outage must not end the training
            logger.warning("MLflow: could not %s (%s); training goes on without live tracking.", what, error)
            self.reference = None


@contextmanager
def training_run(
    experiment: str,
    run_name: str,
    role: str,
    params: dict[str, Any],
    monitor: MonitorParams,
    project_dir: Path = Path("."),
) -> Iterator[LiveRun]:
    """Opens the MLflow run of a training (``role``: student or teacher) and yields its logger.

    The run ends FINISHED when the body returns and FAILED when it raises. If
    the tracking server cannot be reached, the logger does nothing and is not
    ``active``; the caller records ``live.reference`` only when it is.
    """
    uri = tracking_uri(project_dir)
    try:
        connect(project_dir)
        experiment_id = ensure_experiment(experiment, project_dir)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags={ROLE_TAG: role},
            log_system_metrics=monitor.system_metrics,
        )
        mlflow.log_params(flatten(params))
    except Exception as error:  # noqa: BLE001 - the dashboard being down is no reason not to train
        logger.warning("MLflow at %s cannot be reached (%s): training without live tracking.", uri, error)
        yield LiveRun(None, monitor.log_every_steps)
        return
    live = LiveRun(RunReference(uri, experiment_id, run.info.run_id), monitor.log_every_steps)
    logger.info("MLflow run %s (%s) tracks this training live at %s", run.info.run_id, run_name, uri)
    status = "FAILED"
    try:
        yield live
        status = "FINISHED"
    finally:
        try:
            # end_run drains the asynchronous metrics before it marks the run ended (MLflow's
            # set_terminated shuts the logging queue down first): a flush before it waited
            # a second more for nothing.
            mlflow.end_run(status=status)
        except Exception as error:  # noqa: BLE001
            logger.warning("MLflow: could not close run %s (%s).", run.info.run_id, error)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested configuration as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
