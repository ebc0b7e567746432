"""Loss functions: tensors in, a scalar out, no hidden state."""

from ssl_core.losses.barlow_twins import BarlowTwinsLoss
from ssl_core.losses.byol import NormalizedMSELoss
from ssl_core.losses.dino import DINOLoss, next_center, softmax_center_teacher
from ssl_core.losses.distillation import QueueDistillationLoss
from ssl_core.losses.info_nce import InfoNCELoss
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.losses.ntx_ent import NTXentLoss
from ssl_core.losses.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "DINOLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "NormalizedMSELoss",
    "QueueDistillationLoss",
    "VICRegLoss",
    "next_center",
    "softmax_center_teacher",
]
