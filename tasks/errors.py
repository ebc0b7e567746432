"""The expected failures: bad params or inputs that the user can fix.

The CLI prints these as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from tasks.evaluate import EvaluationError
from tasks.export import ExportMismatchError
from tasks.ingest import IngestError
from tasks.params import ParamsError
from tasks.pretrain import PretrainError
from tasks.teacher import TeacherError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError,
    IngestError,
    PretrainError,
    TeacherError,
    EvaluationError,
    ExportMismatchError,
    FileNotFoundError,
)


def _registry_errors() -> tuple[type[BaseException], ...]:
    try:
        from tasks.registry import RegistryError
    except ImportError:  # mlflow not installed: registry stages cannot run anyway
        return ()
    return (RegistryError,)


USER_ERRORS += _registry_errors()
