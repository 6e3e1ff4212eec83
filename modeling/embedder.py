"""The embedder: backbone -> pooling -> [embedding layer] -> BNNeck. Holds no class-count-dependent weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeling.pooling import build_pooling


class BNNeck(nn.Module):
    """BatchNorm1d on the pooled feature with its bias frozen at 0 (Luo et al., "Bag of Tricks", 2019).

    The metric loss sees the feature before the neck, the classification loss the one after it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class Embedder(nn.Module):
    """images (N, 3, H, W) -> {'feat': the embedding metric losses see, 'neck_feat': after BNNeck (= feat
    without neck)}.

    backbone -> pooling (MODEL.POOLING) -> [BatchNorm1d: NAMA's 'bn' ARCH token] -> [linear embedding to
    MODEL.EMBEDDING_DIM, kaiming init] -> [L2 normalisation: MODEL.EMBEDDING_NORM] = feat -> [BNNeck] =
    neck_feat. With an uncertainty head (NAMA) the outputs also hold 'uc' (each sample's margin offset u) and
    'uc_norm' (the feature norm the head read), computed from `uc_input` ('feat' on the metric path,
    'neck_feat' on the classification path). `freeze_bn` keeps every BatchNorm of the backbone in eval mode
    with its affine frozen (seed 004's --bn-freeze); `set_warm(True)` freezes everything but the embedding
    layer (seed 004's --warm epochs).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: str = "bnneck",
        pre_bn: bool = False,
        uc_head: nn.Module | None = None,
        uc_input: str = "feat",
        pooling: nn.Module | None = None,
        embedding_dim: int = 0,
        embedding_norm: bool = False,
        freeze_bn: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.pool = pooling if pooling is not None else build_pooling("avg")
        self.pre_bn = nn.BatchNorm1d(backbone.out_channels) if pre_bn else None
        self.embedding = None
        if embedding_dim > 0:
            self.embedding = nn.Linear(backbone.out_channels, embedding_dim)
            nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
            nn.init.zeros_(self.embedding.bias)
        self.feat_dim = embedding_dim if embedding_dim > 0 else backbone.out_channels
        self.embedding_norm = embedding_norm
        self.neck = BNNeck(self.feat_dim) if neck == "bnneck" else None
        self.uc_head = uc_head
        self.uc_input = uc_input
        self.freeze_bn = freeze_bn
        self._always_frozen: set[int] = {id(p) for p in self.parameters() if not p.requires_grad}
        if freeze_bn:
            for module in self._backbone_batchnorms():
                for param in module.parameters():
                    param.requires_grad_(False)
                    self._always_frozen.add(id(param))

    def _backbone_batchnorms(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> Embedder:
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self._backbone_batchnorms():
                module.eval()  # running statistics stay the pretrained ones
        return self

    def set_warm(self, warm: bool) -> None:
        """warm=True: only the embedding layer trains (requires_grad off elsewhere); False: all trainable
        parameters again (frozen BatchNorm affines and the BNNeck bias stay frozen)."""
        embedding = {id(p) for p in self.embedding.parameters()} if self.embedding is not None else set()
        for param in self.parameters():
            if id(param) in self._always_frozen:
                continue
            param.requires_grad_(not warm or id(param) in embedding)

    def has_parameters_without_gradient(self, consumed: set[str] | frozenset[str]) -> bool:
        """Whether some trainable parameter cannot get a gradient when only the outputs in `consumed` (e.g. a
        criterion's `consumed_outputs()`; other keys are ignored) enter the loss (DistributedDataParallel's
        find_unused_parameters).

        Which modules each output depends on, per `forward`: 'feat' on the backbone, pooling, pre-BN and
        embedding layer; 'neck_feat' on those and the BNNeck (with no neck it IS 'feat'); 'uc' on the head's
        input ('feat', or 'neck_feat' on the classification path) and the head's parameters; 'uc_norm' on
        the head's input only (the norm is read before any of the head's parameters). Parameters frozen now
        (requires_grad False) do not count; the warm epochs' freezing is the caller's business.
        """
        feat = [m for m in (self.backbone, self.pool, self.pre_bn, self.embedding) if m is not None]
        neck_feat = feat + ([self.neck] if self.neck is not None else [])
        head_input = neck_feat if self.uc_input == "neck_feat" else feat
        depends = {"feat": feat, "neck_feat": neck_feat}
        if self.uc_head is not None:
            depends["uc"] = [*head_input, self.uc_head]
            depends["uc_norm"] = head_input
        reached = {id(p) for key in consumed for module in depends.get(key, ()) for p in module.parameters()}
        return any(p.requires_grad and id(p) not in reached for p in self.parameters())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.pool(self.backbone(images))
        if self.pre_bn is not None:
            feat = self.pre_bn(feat)
        if self.embedding is not None:
            feat = self.embedding(feat)
        if self.embedding_norm:
            feat = F.normalize(feat, dim=1)
        neck_feat = self.neck(feat) if self.neck is not None else feat
        outputs = {"feat": feat, "neck_feat": neck_feat}
        if self.uc_head is not None:
            outputs["uc"], outputs["uc_norm"] = self.uc_head(outputs[self.uc_input])
        return outputs
