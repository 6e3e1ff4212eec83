"""Divide & Conquer's learner masks (engine/methods/dc/masks.py): the masked embedding, doubling into children
2c / 2c+1, the orthogonality regulariser against a loop, fixed slices, and restoring a doubled state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.methods.dc.masks import LearnerMasks, fixed_slices


def test_a_learner_embeds_through_the_relu_of_its_mask_then_normalises():
    masks = LearnerMasks(4)
    masks.double()
    with torch.no_grad():
        masks.values.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    expected = F.normalize(torch.tensor([[1.0, 0.0, 6.0, 0.0]]), dim=1)
    torch.testing.assert_close(masks.embed(x, 0), expected)
    torch.testing.assert_close(masks.embed(x, None), F.normalize(x, dim=1))


def test_doubling_clones_each_mask_into_children_2c_and_2c_plus_1():
    masks = LearnerMasks(6, init="normal", generator=torch.Generator().manual_seed(0))
    masks.double()
    with torch.no_grad():
        masks.values.add_(torch.arange(2.0)[:, None])  # two different parents
    parents = masks.values.detach().clone()
    masks.double()
    assert masks.k == 4 and isinstance(masks.values, torch.nn.Parameter)
    for c in range(2):
        assert torch.equal(masks.values[2 * c], parents[c]) and torch.equal(masks.values[2 * c + 1], parents[c])
    assert masks.values.data_ptr() != parents.data_ptr()


def test_the_orthogonality_regulariser_is_the_mean_cosine_over_ordered_pairs():
    torch.manual_seed(1)
    masks = LearnerMasks(5)
    masks.values = torch.nn.Parameter(torch.randn(4, 5))
    relu = F.relu(masks.values.detach())
    pairs = [F.cosine_similarity(relu[i], relu[j], dim=0) for i in range(4) for j in range(4) if i != j]
    torch.testing.assert_close(masks.orthogonality(), torch.stack(pairs).mean())
    masks.orthogonality().backward()
    assert masks.values.grad is not None
    assert LearnerMasks(5).orthogonality().item() == 0.0


def test_fixed_masks_are_disjoint_slices_that_cover_the_embedding():
    slices = fixed_slices(3, 10)
    assert slices.sum(0).tolist() == [1.0] * 10 and slices.sum(1).tolist() == [3.0, 4.0, 3.0]
    masks = LearnerMasks(10, fixed=True)
    masks.double()
    masks.double()
    assert masks.k == 4 and not list(masks.parameters()) and masks.orthogonality().item() == 0.0


def test_a_doubled_state_loads_into_fresh_masks():
    masks = LearnerMasks(6, init="normal", generator=torch.Generator().manual_seed(2))
    masks.double()
    masks.double()
    fresh = LearnerMasks(6)
    state = masks.state_dict()
    fresh.resize_for(state)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.values, masks.values)
    with pytest.raises(ValueError, match="mask init"):
        LearnerMasks(6, init="uniform")


def test_after_a_split_the_optimizer_trains_the_children_from_their_parent_state():
    masks = LearnerMasks(4, init="normal", generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam([masks.values], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (masks.values**2).sum().backward()
        optimizer.step()
    parent_state = {k: v.clone() for k, v in optimizer.state[masks.values].items()}
    masks.double(optimizer)
    (group,) = optimizer.param_groups
    assert group["params"] == [masks.values] and masks.k == 2
    state = optimizer.state[masks.values]
    assert torch.equal(state["step"], parent_state["step"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], parent_state[key].repeat_interleave(2, dim=0))
    # a step after the split is each child's copy of the parent's step
    reference = torch.optim.Adam([torch.nn.Parameter(masks.values.detach()[:1].clone())], lr=0.1)
    reference.load_state_dict(
        {
            "state": {0: {k: v.clone() for k, v in parent_state.items()}},
            "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "params": [0]}],
        }
    )
    for opt, param in ((optimizer, masks.values), (reference, reference.param_groups[0]["params"][0])):
        opt.zero_grad()
        (param**2).sum().backward()
        opt.step()
    torch.testing.assert_close(masks.values.detach()[0], reference.param_groups[0]["params"][0].detach()[0])
    torch.testing.assert_close(masks.values.detach()[1], masks.values.detach()[0])
    # the optimizer state saved after the split loads into a fresh optimizer over restored masks (resume)
    fresh = LearnerMasks(4)
    fresh.resize_for(masks.state_dict())
    fresh.load_state_dict(masks.state_dict())
    restored = torch.optim.Adam([fresh.values], lr=0.1)
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(restored.state[fresh.values]["exp_avg"], optimizer.state[masks.values]["exp_avg"])
    with pytest.raises(ValueError, match="not a parameter"):
        LearnerMasks(4).double(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]))
