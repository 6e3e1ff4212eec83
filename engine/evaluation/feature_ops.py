"""Small operations on feature matrices shared by the evaluators and the re-ranker."""

from __future__ import annotations

import torch

ROW_BLOCK = 8192  # rows per block: bounds the temporaries of row-wise reductions


def row_sq_norms(x: torch.Tensor, block: int = ROW_BLOCK) -> torch.Tensor:
    """Squared L2 norm of every row of ``x`` in fp32, computed in row blocks (bounded temporaries)."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], block):
        blk = x[s : s + block]
        out[s : s + blk.shape[0]] = (blk * blk).sum(dim=1)
    return out


def check_feature_pair(query_feats: torch.Tensor, gallery_feats: torch.Tensor, same_width: bool = True) -> None:
    """ValueError unless both are 2-D (N, D) on the same device, with the same D when ``same_width``
    (a custom distance function may compare features of different widths)."""
    if query_feats.dim() != 2 or gallery_feats.dim() != 2:
        raise ValueError(
            f"features must be 2-D (N, D), got shapes {tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}"
        )
    if same_width and query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"feature dimensions differ: query {query_feats.shape[1]} vs gallery {gallery_feats.shape[1]}")
    if query_feats.device != gallery_feats.device:
        raise ValueError(f"query_feats is on {query_feats.device} but gallery_feats is on {gallery_feats.device}")
