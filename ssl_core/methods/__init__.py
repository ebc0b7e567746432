"""Self-supervised methods, selectable by name (``pretrain.method`` in params.yaml).

:data:`RECIPES` is the one list of methods: each name with its recipe, the
dataclass of its hyper-parameters. Importing this package does not import torch,
so that params.yaml validates in a fraction of a second; the networks live in the
method modules (``ssl_core.methods.simclr.SimCLR``, ...) and
:func:`ssl_core.methods.factory.build_method` builds any of them by name.

Adding a method: its recipe in :mod:`~ssl_core.methods.recipes`, a line here, its
:class:`~ssl_core.methods.base.SSLMethod` subclass in a module of its own, and that
class in :data:`ssl_core.methods.factory.IMPLEMENTATIONS`. Everything else (the
params schema, the pipeline, the benchmark, the tests) follows from these.
"""

from ssl_core.methods.recipes import (
    BarlowTwinsConfig,
    BYOLConfig,
    DINOConfig,
    DistillationConfig,
    MoCoConfig,
    MultiCropConfig,
    SimCLRConfig,
    SimSiamConfig,
    VICRegConfig,
)

# params.yaml name -> recipe, in the order methods are documented and benchmarked.
RECIPES: dict[str, type] = {
    "distillation": DistillationConfig,
    "simclr": SimCLRConfig,
    "moco": MoCoConfig,
    "simsiam": SimSiamConfig,
    "barlowtwins": BarlowTwinsConfig,
    "byol": BYOLConfig,
    "dino": DINOConfig,
    "vicreg": VICRegConfig,
}
METHOD_NAMES = tuple(RECIPES)

__all__ = [
    "METHOD_NAMES",
    "RECIPES",
    "BarlowTwinsConfig",
    "BYOLConfig",
    "DINOConfig",
    "DistillationConfig",
    "MoCoConfig",
    "MultiCropConfig",
    "SimCLRConfig",
    "SimSiamConfig",
    "VICRegConfig",
]
