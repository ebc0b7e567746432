"""The expected failures: bad params or inputs that the user can fix.

The CLI prints these as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from tasks.evaluate import EvaluationError
from tasks.export import ExportMismatchError
from tasks.ingest import IngestError
from tasks.params import ParamsError
from tasks.pretrain import PretrainError
from tasks.registry import RegistryError
from tasks.teacher import TeacherError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError,
    IngestError,
    PretrainError,
    TeacherError,
    EvaluationError,
    ExportMismatchError,
    RegistryError,
    FileNotFoundError,
)
