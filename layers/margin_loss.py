"""Margin loss with distance-weighted sampling (the Divide-and-Conquer setting)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layers.distance_weighted import check_sampler_cutoffs, triplets_from_distances
from layers.term import LossTerm

# inside the square root: the distance of a pair of identical vectors keeps a finite gradient
_DIST_EPS = 1e-8


class MarginLoss(LossTerm):
    """Margin loss (Wu, Manmatha, Smola, Krähenbühl: "Sampling Matters in Deep Embedding Learning", ICCV 2017)
    on triplets from distance-weighted sampling, as trained in Divide-and-Conquer (Sanakoyeu, Tschernezki,
    Büchler, Ommer: "Divide and Conquer the Embedding Space for Metric Learning", CVPR 2019).

    The features are L2-normalised first: the sampler's weights are the inverse of the density of distances
    between points on the unit sphere, and Wu et al. train normalised embeddings (so d lies in [0, 2] and a
    beta of 1.2 means something). Triplets (a, p, n) come from `distance_weighted_triplets`; with
    d(x, y) = sqrt(||x - y||^2 + 1e-8), alpha the margin and beta_a the boundary used for anchor a,

        L = ( sum_{(a,p,n)} [ relu(d(a,p) - beta_a + alpha) + relu(beta_a - d(a,n) + alpha) ]
              + nu * sum_{(a,p,n)} |beta_a| ) / #{non-zero hinge terms}

    where positive and negative hinge terms are counted separately; when none is non-zero the numerator is
    returned as is (a zero connected to the graph when nu = 0).

    beta_a: with learn_beta=False one fixed scalar (a buffer named `beta`); with learn_beta=True
    `self.beta` is an nn.Parameter of shape (num_classes,) initialised to `beta` and indexed by the anchor's
    label (Wu et al.'s beta^(class)). This module does not optimise them: they are in the optimizer group
    'beta' (`parameter_groups`; Wu et al.: lr 0.1, weight decay 0). The nu term regularises
    learnable betas only (with a fixed beta it would be a constant), so nu > 0 requires learn_beta=True.

    Stats: "beta" = mean beta_a over the triplets, "active_terms" = fraction of non-zero hinge terms.
    Sampling uses the global RNG unless `self.generator` is set to a torch.Generator.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ("beta", "active_terms")

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.2,
        beta: float = 1.2,
        learn_beta: bool = False,
        nu: float = 0.0,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
    ):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not (math.isfinite(alpha) and alpha >= 0.0):
            raise ValueError(f"alpha (the margin) must be a finite number >= 0, got {alpha}")
        if not (math.isfinite(beta) and beta > 0.0):
            raise ValueError(f"beta must be a finite positive distance boundary, got {beta}")
        if not (math.isfinite(nu) and nu >= 0.0):
            raise ValueError(f"nu must be a finite number >= 0, got {nu}")
        if nu > 0.0 and not learn_beta:
            raise ValueError("nu > 0 regularises learnable betas: set learn_beta=True or nu=0")
        check_sampler_cutoffs(cutoff, nonzero_loss_cutoff)
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.learn_beta = bool(learn_beta)
        self.nu = float(nu)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.beta: torch.Tensor
        if self.learn_beta:
            self.beta = nn.Parameter(torch.full((num_classes,), float(beta)))
        else:
            # a buffer follows .to(device) and lands in the state dict, but no optimizer ever sees it
            self.register_buffer("beta", torch.tensor(float(beta)))
        self.generator: torch.Generator | None = None

    @staticmethod
    def _gram(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram matrix and squared norms of the L2-normalised features, in fp32 (fp64 kept for gradcheck).

        The triplet distances are read off ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y: one n x n x d matmul instead
        of gathering 2 x #triplets rows of d values, and the sampler reuses it (detached)."""
        f = F.normalize(feats if feats.dtype == torch.float64 else feats.float(), dim=1)
        return f @ f.t(), (f * f).sum(1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The learnable betas in 'beta' (none with a fixed beta, a buffer)."""
        return self._groups_with({"beta": [self.beta]} if self.learn_beta else {})

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gram, sq = self._gram(feats)
        with torch.no_grad():
            g, s = gram.detach(), sq.detach()
            dist = (s[:, None] + s[None, :] - 2.0 * g).clamp_min(0.0).sqrt()
        anchors, positives, negatives = triplets_from_distances(
            dist, labels, feats.shape[1], self.cutoff, self.nonzero_loss_cutoff, generator=self.generator
        )
        return self._loss(gram, sq, feats, labels, anchors, positives, negatives)

    def forward_triplets(
        self,
        feats: torch.Tensor,
        labels: torch.Tensor,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
    ) -> torch.Tensor:
        """The loss on given triplets (indices into the batch) instead of sampled ones."""
        gram, sq = self._gram(feats)
        return self._loss(gram, sq, feats, labels, anchors, positives, negatives)

    def _loss(
        self,
        gram: torch.Tensor,
        sq: torch.Tensor,
        feats: torch.Tensor,
        labels: torch.Tensor,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
    ) -> torch.Tensor:
        if anchors.numel() == 0:
            self.stats = {
                "beta": self.beta.detach().float().mean(),
                "active_terms": torch.zeros((), device=feats.device),
            }
            zero = feats.sum() * 0.0
            # keep the betas in the graph so that DDP sees every parameter used
            return zero + self.beta.sum() * 0.0 if self.learn_beta else zero
        sq_a = sq[anchors]
        # clamp: rounding can push the Gram form of a tiny squared distance below 0
        d_ap = ((sq_a + sq[positives] - 2.0 * gram[anchors, positives]).clamp_min(0.0) + _DIST_EPS).sqrt()
        d_an = ((sq_a + sq[negatives] - 2.0 * gram[anchors, negatives]).clamp_min(0.0) + _DIST_EPS).sqrt()
        beta = (self.beta[labels[anchors]] if self.learn_beta else self.beta).to(gram.dtype)
        pos_terms = F.relu(d_ap - beta + self.alpha)
        neg_terms = F.relu(beta - d_an + self.alpha)
        active = (pos_terms > 0).sum() + (neg_terms > 0).sum()
        total = pos_terms.sum() + neg_terms.sum()
        if self.nu > 0.0:
            total = total + self.nu * beta.abs().expand_as(d_ap).sum()
        loss = total / active.clamp_min(1).to(total.dtype)
        self.stats = {
            "beta": beta.detach().float().mean(),
            "active_terms": active.detach().float() / (2 * d_ap.numel()),
        }
        return loss


__all__ = ["MarginLoss"]
