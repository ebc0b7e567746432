"""Self-supervised methods, selectable by name (``pretrain.method`` in params.yaml)."""

from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.distillation import Distillation, DistillationConfig, auto_queue_size
from ssl_core.methods.simclr import SimCLR, SimCLRConfig

# Methods that need a frozen teacher to train.
TEACHER_METHODS = ("distillation",)
METHOD_NAMES = ("distillation", "simclr")

__all__ = [
    "METHOD_NAMES",
    "TEACHER_METHODS",
    "Distillation",
    "DistillationConfig",
    "SSLMethod",
    "SimCLR",
    "SimCLRConfig",
    "StepOutput",
    "auto_queue_size",
]
