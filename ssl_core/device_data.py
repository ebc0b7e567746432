"""A training set decoded once into uint8 tensors, served in batches of random views on the device.

The DataLoader path decodes every JPEG and augments every view with PIL on the host,
one image at a time, every epoch; on a GPU that starves the device. Here the images
are decoded once (in parallel, with a DataLoader), stored as one (N, 3, S, S) uint8
tensor on the GPU when it fits (CIFAR-10's 50,000 images are 154 MB) or in pinned
host memory when it does not, and each step indexes a batch with a device-side
permutation and renders its views with :class:`~ssl_core.batch_augment.BatchViews`.

Images are stored square: each is resized (short side to ``S``) and center-cropped,
so the random crops of a non-square image come from its central square.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ssl_core.batch_augment import BatchViews
from ssl_core.data import ManifestDataset

logger = logging.getLogger(__name__)

# Keep the stored images below this fraction of the GPU's free memory; the rest is for training.
DEVICE_MEMORY_FRACTION = 0.25
# Beyond this fraction of the host's memory the decoded set is not held at all: the DataLoader path streams it.
HOST_MEMORY_FRACTION = 0.5


def decode_images(
    dataset: ManifestDataset, side: int, num_workers: int = 0, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``dataset`` as a (N, 3, side, side) uint8 tensor, with its (N,) labels (-1: unlabeled)."""
    decoding = copy.copy(dataset)  # the same images and labels, another transform
    decoding.transform = T.Compose([T.Resize(side, antialias=True), T.CenterCrop(side), T.PILToTensor()])
    loader = DataLoader(decoding, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    images, labels = [], []
    for batch, batch_labels in loader:
        images.append(batch)
        labels.append(batch_labels)
    return torch.cat(images), torch.cat(labels).long()


def host_memory_bytes() -> int:
    """Physical memory of this machine (Linux and macOS sysconf)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fast_path_applies(num_images: int, side: int, device: torch.device) -> bool:
    """Whether training on ``device`` should use :class:`DeviceImages`: on a GPU, when the decoded set fits in memory.

    On a CPU the DataLoader path stays: rendering a batch of views there is no faster
    than PIL per image (about 0.4 against 0.3 ms per 32 px view on one core), and the
    CPU runs keep their exact results.
    """
    if device.type != "cuda":
        return False
    needed = num_images * 3 * side * side
    if needed > HOST_MEMORY_FRACTION * host_memory_bytes():
        logger.info("%d images of %d px (%.1f GB) are too many to decode up front.", num_images, side, needed / 1e9)
        return False
    return True


def fits_on_device(num_bytes: int, device: torch.device) -> bool:
    """Whether ``num_bytes`` of images may live on ``device``: always on a CPU; on a GPU, in a share of free memory."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return num_bytes <= DEVICE_MEMORY_FRACTION * free


@dataclass
class DeviceImages:
    """A decoded training set and the random views the method trains on.

    Attributes:
        images: (N, 3, S, S) uint8, on the training device, or in pinned host memory
            when it does not fit there (:meth:`place`).
        labels: (N,) int64 labels, -1 for unlabeled images.
        views: renders the views of a uint8 batch; set by the caller like a
            Dataset's ``transform``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    views: BatchViews | None = None

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def decode(cls, dataset: ManifestDataset, side: int, device: torch.device, num_workers: int = 0) -> DeviceImages:
        """Decodes ``dataset`` once and places it on ``device`` (or pinned host memory, see :meth:`place`)."""
        images, labels = decode_images(dataset, side, num_workers)
        return cls(images, labels).place(device)

    def place(self, device: torch.device) -> DeviceImages:
        """Moves the images to ``device`` when they fit there, else pins them in host memory."""
        if fits_on_device(self.images.numel(), device):
            self.images = self.images.to(device)
        elif device.type == "cuda":
            logger.info("Training images (%.1f GB) stay in pinned host memory.", self.images.numel() / 1e9)
            self.images = self.images.pin_memory()
        return self

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        shard: tuple[int, int] = (0, 1),
        views_generator: torch.Generator | None = None,
    ) -> Iterator[list[torch.Tensor]]:
        """One epoch: batches of ``batch_size`` images (drop_last) in a random order, each rendered as views.

        The order comes from ``generator`` (on ``device``), and so do the views unless
        ``views_generator`` is given, so an epoch repeats exactly from the seeds.
        ``shard=(rank, world_size)``: every rank draws the same order from the same
        seed and takes every ``world_size``-th image of it, as DistributedSampler does
        (the last ``len % world_size`` images sit the epoch out, so all ranks run as
        many steps); each rank should then render its views from a generator of its own.

        Raises:
            ValueError: when :attr:`views` is not set.
        """
        if self.views is None:
            raise ValueError("DeviceImages.views is not set: give it the method's BatchViews before training.")
        rank, world_size = shard
        order = torch.randperm(len(self), generator=generator, device=device)
        order = order[rank : len(order) - len(order) % world_size : world_size]
        return self._rendered(order, batch_size, views_generator or generator, device)

    def _rendered(
        self, order: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> Iterator[list[torch.Tensor]]:
        on_host = self.images.device.type != device.type
        if on_host:
            order = order.cpu()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            with record_function("ssl:views"):  # one of ssl_core.engine.STEP_PHASES
                batch = self.images[order[start : start + batch_size]]
                if on_host:
                    batch = batch.pin_memory().to(device, non_blocking=True)
                views = self.views(batch, generator)
            yield views
