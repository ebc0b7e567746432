"""One way to build any method by name: the method class, its recipe, its views.

    from ssl_core.backbones import build_backbone
    from ssl_core.methods.factory import build_method

    method = build_method("simclr", build_backbone("resnet18_cifar"))
    transform = method.train_transform(method.view_config(32), Normalization())
    lr = method.peak_lr(base_lr=0.06, batch_size=512)  # 0.24; SimSiam keeps 0.06

The pipeline, the benchmark and the tests all build methods here, so none of them
needs to know which method it holds: each method class says what it needs
(:class:`~ssl_core.methods.base.SSLMethod`'s class attributes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ssl_core.methods import RECIPES
from ssl_core.methods.barlow_twins import BarlowTwins
from ssl_core.methods.base import SSLMethod
from ssl_core.methods.byol import BYOL
from ssl_core.methods.dino import DINO
from ssl_core.methods.distillation import Distillation
from ssl_core.methods.moco import MoCo
from ssl_core.methods.simclr import SimCLR
from ssl_core.methods.simsiam import SimSiam
from ssl_core.methods.vicreg import VICReg

if TYPE_CHECKING:
    from ssl_core.backbones import Backbone
    from ssl_core.teachers import Teacher

# The network of each recipe in ssl_core.methods.RECIPES.
IMPLEMENTATIONS: tuple[type[SSLMethod], ...] = (Distillation, SimCLR, MoCo, SimSiam, BarlowTwins, BYOL, DINO, VICReg)


def _classes_by_name() -> dict[str, type[SSLMethod]]:
    by_recipe = {cls.recipe: cls for cls in IMPLEMENTATIONS}
    missing = [name for name, recipe in RECIPES.items() if recipe not in by_recipe]
    if missing or len(by_recipe) != len(RECIPES):
        raise ImportError(
            f"ssl_core.methods: every recipe needs exactly one class in IMPLEMENTATIONS; missing {missing}"
        )
    return {name: by_recipe[recipe] for name, recipe in RECIPES.items()}


METHOD_CLASSES: dict[str, type[SSLMethod]] = _classes_by_name()


def method_class(name: str) -> type[SSLMethod]:
    """The :class:`SSLMethod` subclass of the method called ``name`` in params.yaml.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in METHOD_CLASSES:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(METHOD_CLASSES)}")
    return METHOD_CLASSES[name]


def build_method(
    name: str, backbone: Backbone, recipe: Any = None, *, teacher: Teacher | None = None, num_images: int = 0
) -> SSLMethod:
    """The method ``name`` around ``backbone``.

    Args:
        name: a key of :data:`ssl_core.methods.RECIPES`.
        backbone: the network to train.
        recipe: the method's recipe; None for its defaults.
        teacher: the frozen teacher of a method that ``needs_teacher``.
        num_images: training-set size, for recipes that scale with it (distillation's queue).

    Raises:
        ValueError: for an unknown name, another method's recipe, or a teacher missing or unexpected.
    """
    return method_class(name).build(backbone, recipe, teacher=teacher, num_images=num_images)
