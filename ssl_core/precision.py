"""Device and numeric-precision helpers shared by training and embedding."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager

import numpy as np
import torch

from ssl_core.config_checks import PRECISION_SETTINGS, PRECISIONS

logger = logging.getLogger(__name__)

# The first CUDA compute capability with bf16 tensor cores (Ampere); cuDNN has no bf16 convolutions before it.
BF16_CUDA_CAPABILITY = (8, 0)
# The first with fp16 tensor cores (Volta): a V100 or a T4 computes fp16 8x as fast as fp32 at its peak
# (T4: 65 against 8.1 TFLOPS), where an older GPU has no tensor cores to gain from.
FP16_CUDA_CAPABILITY = (7, 0)
# What autocast computes in for each mixed precision.
LOW_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively, so that bf16 autocast beats fp32 there.

    CUDA: compute capability 8.0 or newer (A100, L4, RTX 30xx and later; not a T4 or V100, where
    cuDNN has no bf16 convolutions). CPU: AVX512-BF16 or AMX. Without them oneDNN emulates bf16: a
    training step of the CIFAR ResNet-18 took 2.4x fp32's time with AVX-512 alone and 14x with AVX2
    alone, most laptops' instructions (``benchmarks/results/cpu-precision-isa``). Other devices: False.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= BF16_CUDA_CAPABILITY
    if device.type == "cpu":
        return _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported")
    return False


def _cpu_has(check: str) -> bool:
    """One of ``torch.cpu``'s instruction checks (private, so a torch without it counts as False)."""
    return bool(getattr(torch.cpu, check, lambda: False)())


def unsupported_precision(setting: str, device: torch.device) -> str | None:
    """Why ``setting`` cannot run on ``device`` (an unknown setting, bf16-mixed on a GPU without
    bf16 convolutions, fp16-mixed off CUDA), or None where it can."""
    if setting not in PRECISION_SETTINGS:
        return f"choose one of {', '.join(repr(p) for p in PRECISION_SETTINGS)}"
    if setting == "fp16-mixed" and device.type != "cuda":
        # A CPU converts fp16 to fp32 and back around its kernels: fp32's work and more, and bf16's range is
        # what a CPU with native low precision has anyway.
        return f"fp16-mixed is for CUDA GPUs, not {device.type}: use 'auto' (bf16-mixed where native) or 'fp32'"
    if setting == "bf16-mixed" and device.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        return (
            f"bf16-mixed needs a GPU of compute capability 8.0 or newer; {torch.cuda.get_device_name(device)} has "
            f"{major}.{minor}, where cuDNN has no bf16 convolutions: use 'auto' or 'fp32'"
        )
    return None


# CPUs already warned about an explicit bf16-mixed: a chain resolves the same setting several times.
_warned_emulated_bf16: set[str] = set()


def resolve_precision(setting: str, device: torch.device) -> str:
    """The precision to train or embed with on ``device`` (:data:`PRECISIONS`) for a setting of
    :data:`PRECISION_SETTINGS`: ``auto`` is bf16-mixed where :func:`native_bf16`, fp16-mixed on the
    GPUs with fp16 tensor cores but no bf16 ones (Volta, Turing: a V100, a T4), else fp32.

    An explicit bf16-mixed on a CPU without native bf16 runs, emulated, with a warning (once).

    Raises:
        ValueError: where :func:`unsupported_precision` says why.
    """
    problem = unsupported_precision(setting, device)
    if problem is not None:
        raise ValueError(f"precision={setting!r}: {problem}")
    if setting == "auto":
        if native_bf16(device):
            return "bf16-mixed"
        fp16_tensor_cores = device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP16_CUDA_CAPABILITY
        return "fp16-mixed" if fp16_tensor_cores else "fp32"
    if setting == "bf16-mixed" and device.type == "cpu" and not native_bf16(device):
        if str(device) not in _warned_emulated_bf16:
            _warned_emulated_bf16.add(str(device))
            logger.warning(
                "precision='bf16-mixed' on a CPU without AVX512-BF16 or AMX: bf16 is emulated there, several "
                "times slower than fp32 (14x with AVX2 alone, benchmarks/results/cpu-precision-isa); "
                "'auto' picks fp32 on this CPU."
            )
    return setting


def autocast(device: str | torch.device, precision: str) -> AbstractContextManager:
    """Autocast to bf16 for ``bf16-mixed`` or to fp16 for ``fp16-mixed`` (weights and optimizer stay
    fp32), else a no-op.

    bf16 needs no loss scaling, and on CPUs with AVX512-BF16 it trains the CIFAR ResNet-18 about
    twice as fast as fp32; fp16 training needs :func:`loss_scaler`'s scaling.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=LOW_PRECISION_DTYPES[precision])


def loss_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Dynamic loss scaling for ``fp16-mixed`` (Micikevicius et al., "Mixed Precision Training",
    https://arxiv.org/abs/1710.03740), a pass-through otherwise.

    fp16 flushes gradients below 6e-8 to zero, so the loss is multiplied by a scale (65,536 at first)
    before the backward pass and the gradients divided by it before the update; a step whose gradients
    overflow is skipped and the scale halved, and after 2,000 steps without overflow it doubles
    (torch's :class:`~torch.amp.GradScaler`). Disabled, every call of the scaler is the identity, so
    fp32 and bf16 train bit for bit as without it.
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, NumPy and torch; returns a generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextlib.contextmanager
def cudnn_autotuning(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN times its convolution algorithms for each new input shape and keeps the fastest.

    Training feeds the same few shapes step after step, so the one-off timing pays back
    at once; torchvision's reference training scripts turn it on the same way. Left off
    where deterministic algorithms were asked for, and restored on exit.
    """
    previous = torch.backends.cudnn.benchmark
    wanted = device.type == "cuda" and not torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = previous or wanted
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
