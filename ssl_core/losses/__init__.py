"""Loss functions: tensors in, a scalar out, no hidden state."""

from ssl_core.losses.distillation import QueueDistillationLoss
from ssl_core.losses.ntx_ent import NTXentLoss

__all__ = ["NTXentLoss", "QueueDistillationLoss"]
