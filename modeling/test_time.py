"""The embedder as evaluation uses it, as one module: images -> the test embedding (and NAMA's offset).

What engine/evaluation/dataset_evaluation.py computes per batch and its metric then normalises, in one forward
pass a caller outside the engine can run, export (tools/export.py) or embed with (tools/embed.py):

- the feature TEST.NECK_FEAT picks ('after': the BNNeck's output ``neck_feat``, 'before': ``feat``);
- with TEST.FLIP 'yes' the mean of the features of the image and of its horizontal mirror;
- L2-normalised when TEST.FEAT_NORM is 'yes';
- with the uncertainty head of NAMA (Chen et al., "Noise-Aware Metric Learning"), its offset ``u`` as a
  second output (averaged over the mirror likewise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config.choices import NECK_FEATS, YES_NO
from config.errors import UserError, check_choice
from modeling import build_model, load_weights
from modeling.embedder import Embedder


class TestTimeEmbedder(nn.Module):
    """images (N, 3, H, W), normalised as the test transform leaves them -> embeddings (N, D), or
    (embeddings, offsets (N,)) when the model has an uncertainty head."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, model: Embedder, neck_feat: str = "after", feat_norm: bool = True, flip: bool = False):
        super().__init__()
        check_choice("TEST.NECK_FEAT", neck_feat, NECK_FEATS)
        self.model = model
        self.key = "neck_feat" if neck_feat == "after" else "feat"
        self.feat_norm, self.flip = feat_norm, flip
        self.has_uc = model.uc_head is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(images)
        feats = outputs[self.key].float()
        uc = outputs["uc"].float() if self.has_uc else None
        if self.flip:
            mirror = self.model(torch.flip(images, dims=[3]))
            feats = (feats + mirror[self.key].float()) / 2
            uc = (uc + mirror["uc"].float()) / 2 if uc is not None else None
        if self.feat_norm:
            feats = F.normalize(feats, dim=1)
        return feats if uc is None else (feats, uc)


def build_test_time_embedder(cfg, weight: str | None = None) -> TestTimeEmbedder:
    """The model of MODEL.* with the weights of `weight` (default TEST.WEIGHT: a checkpoint or a run folder,
    which stands for its best.pt), in eval mode on the CPU, wrapped per TEST.NECK_FEAT / FEAT_NORM / FLIP."""
    weight = cfg.TEST.WEIGHT if weight is None else weight
    if not weight:
        raise UserError("TEST.WEIGHT is empty; expected the checkpoint (or run folder) of a trained model")
    check_choice("TEST.FEAT_NORM", cfg.TEST.FEAT_NORM, YES_NO)
    check_choice("TEST.FLIP", cfg.TEST.FLIP, YES_NO)
    model = build_model(cfg, load_pretrained=False)
    load_weights(cfg, model, weight, "TEST.WEIGHT")
    embedder = TestTimeEmbedder(model, cfg.TEST.NECK_FEAT, cfg.TEST.FEAT_NORM == "yes", cfg.TEST.FLIP == "yes")
    return embedder.eval()
