"""Self-supervised methods, selectable by name (``pretrain.method`` in params.yaml).

Each method is an :class:`SSLMethod` built as ``Method(backbone, feature_dim, config)``
from its frozen config dataclass; ``distillation`` also takes a frozen teacher.
"""

from ssl_core.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.byol import BYOL, BYOLConfig
from ssl_core.methods.dino import DINO, DINOConfig
from ssl_core.methods.distillation import Distillation, DistillationConfig, auto_queue_size
from ssl_core.methods.moco import MoCo, MoCoConfig
from ssl_core.methods.simclr import SimCLR, SimCLRConfig
from ssl_core.methods.simsiam import SimSiam, SimSiamConfig

# Methods built from (backbone, feature_dim, config), with their config class.
SELF_SUPERVISED: dict[str, tuple[type[SSLMethod], type]] = {
    "simclr": (SimCLR, SimCLRConfig),
    "moco": (MoCo, MoCoConfig),
    "simsiam": (SimSiam, SimSiamConfig),
    "barlowtwins": (BarlowTwins, BarlowTwinsConfig),
    "byol": (BYOL, BYOLConfig),
    "dino": (DINO, DINOConfig),
}
# Methods that need a frozen teacher to train.
TEACHER_METHODS = ("distillation",)
METHOD_NAMES = ("distillation", *SELF_SUPERVISED)

__all__ = [
    "BYOL",
    "DINO",
    "METHOD_NAMES",
    "SELF_SUPERVISED",
    "TEACHER_METHODS",
    "BarlowTwins",
    "BarlowTwinsConfig",
    "BYOLConfig",
    "DINOConfig",
    "Distillation",
    "DistillationConfig",
    "MoCo",
    "MoCoConfig",
    "SSLMethod",
    "SimCLR",
    "SimCLRConfig",
    "SimSiam",
    "SimSiamConfig",
    "StepOutput",
    "auto_queue_size",
]
