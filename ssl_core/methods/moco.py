"""MoCo v2: contrast queries against a momentum key encoder and a bank of past keys.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020, https://arxiv.org/abs/1911.05722; Chen et al., "Improved Baselines with
Momentum Contrastive Learning" (MoCo v2), 2020, https://arxiv.org/abs/2003.04297.

The query encoder (backbone + MLP head) is trained; the key encoder is a frozen copy
that follows it by EMA after every optimizer step. Negatives come from a FIFO memory
bank of the keys of earlier batches, so their number does not depend on the batch
size. As in the lightly CIFAR-10 benchmark and MoCo's CIFAR-10 demo, the loss is
symmetric: each view serves once as query and once as key.

On several processes (DDP) each rank computes the loss of its own queries, and the keys
of all ranks join the bank (MoCo's ``concat_all_gather`` before ``_dequeue_and_enqueue``,
lightly's ``MemoryBankModule(gather_distributed=True)``), so every rank holds the same
bank, the one a single process would hold after the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.distributed import concat_all_gather
from ssl_core.losses.info_nce import InfoNCELoss
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import MoCoConfig
from ssl_core.momentum import ema_update, frozen_copy


def moco_v2_projection_head(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    """MoCo v2's head: "a 2-layer MLP head (hidden layer 2048-d, with ReLU)", no BatchNorm.

    Unlike :func:`ssl_core.heads.projection_mlp` it has no BatchNorm, as in MoCo v2 and
    lightly's ``MoCoProjectionHead``: BN in the head would give queries one more
    channel to read batch statistics from, the leak that shuffle-BN exists to block.
    """
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim))


class MoCo(SSLMethod):
    """Backbone -> MLP head (queries) vs. momentum copy (keys) and a memory bank.

    Letters: B = batch size, f = feature_dim, p = projection_dim, K = memory_bank_size.

    Shuffle-BN is left out. MoCo shuffles the key batch across GPUs so that a query and
    its key never share BatchNorm statistics; on one device with whole-batch BN a
    shuffle changes nothing (lightly's benchmark emulates devices with SplitBatchNorm,
    which needs control of the backbone's BN layers). On several GPUs it still is left
    out: each GPU's queries and keys share its BatchNorm statistics, as on one device;
    ``TrainConfig.sync_batchnorm`` takes them over the global batch instead, MoCo v3's
    answer to the same leak.

    Args:
        backbone: (B, 3, H, W) -> (B, feature_dim); its copy becomes the key backbone.
        feature_dim: the backbone's feature size.
        config: the recipe.
    """

    recipe = MoCoConfig
    compiled_networks = ("backbone", "key_backbone")
    num_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MoCoConfig = MoCoConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.projection_head = moco_v2_projection_head(feature_dim, config.projection_hidden_dim, config.projection_dim)
        # The key encoder: no gradient, never in the optimizer, but checkpointed (its
        # EMA weights cannot be rebuilt from anything else, so frozen_prefixes stays ()).
        self.key_backbone = frozen_copy(backbone)
        self.key_projection_head = frozen_copy(self.projection_head)
        self.criterion = InfoNCELoss(config.temperature)
        self.momentum = config.momentum
        # Random unit vectors until real keys push them out, as in MoCo's code: they
        # act as uninformative negatives for the first K / 2B steps.
        self.register_buffer(
            "memory_bank", F.normalize(torch.randn(config.memory_bank_size, config.projection_dim), dim=1)
        )

    def embed_queries(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features (B, f) and queries (B, p) of the trained encoder."""
        features = self.backbone(images).flatten(1)  # (B, f)
        return features, self.projection_head(features)  # (B, p)

    @torch.no_grad()
    def embed_keys(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized keys (B, p) of the momentum encoder; no graph is built."""
        keys = self.key_projection_head(self.key_backbone(images).flatten(1))  # (B, p)
        return F.normalize(keys.float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """FIFO update: the newest keys go to the front, the oldest drop off the end."""
        b, k = keys.shape[0], self.memory_bank.shape[0]
        keys = keys.to(self.memory_bank.dtype)
        if b >= k:
            self.memory_bank.copy_(keys[:k])
        else:
            self.memory_bank.copy_(torch.cat([keys, self.memory_bank[: k - b]]))

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        # Separate forwards per view, as in MoCo: BatchNorm sees one view at a time.
        h0, q0 = self.embed_queries(x0)  # (B, f), (B, p)
        _, q1 = self.embed_queries(x1)  # (B, p)
        k0, k1 = self.embed_keys(x0), self.embed_keys(x1)  # (B, p) each
        # A snapshot: enqueue below writes the buffer in place while the graph still
        # refers to the negatives.
        negatives = self.memory_bank.clone()  # (K, p)
        loss = 0.5 * (self.criterion(q0, k1, negatives) + self.criterion(q1, k0, negatives))
        # Both views' keys join the bank only now, so no query meets its own image's
        # key among the negatives (MoCo's CIFAR-10 demo enqueues cat([k1, k2]) likewise).
        # Gathered view by view, the bank reads as that of one process with the global batch.
        self.enqueue(torch.cat([concat_all_gather(k0), concat_all_gather(k1)]))
        return StepOutput(loss=loss, features=h0.detach())

    def after_optimizer_step(self) -> None:
        ema_update(self.backbone, self.key_backbone, self.momentum)
        ema_update(self.projection_head, self.key_projection_head, self.momentum)
