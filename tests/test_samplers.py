"""PKBatchSampler, RandomBatchSampler and SeededBatches (data/samplers.py)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from config import load_config
from config.errors import ConfigError, UserError
from data.build import build_data
from data.samplers import PKBatchSampler, RandomBatchSampler, SeededBatches


def _labels(counts: dict[int, int]) -> list[int]:
    """Dataset labels with `counts[label]` images each, interleaved so indices are not grouped by label."""
    labels = []
    remaining = dict(counts)
    while any(remaining.values()):
        for label in sorted(remaining):
            if remaining[label]:
                labels.append(label)
                remaining[label] -= 1
    return labels


# 10 identities: image counts between 2 and 9 (two with fewer than K = 4)
COUNTS = {0: 9, 1: 4, 2: 2, 3: 7, 4: 5, 5: 3, 6: 8, 7: 4, 8: 6, 9: 4}
LABELS = _labels(COUNTS)
P, K = 4, 4


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


def test_pk_batches_have_p_identities_times_k():
    sampler = PKBatchSampler(LABELS, batch_size=P * K, num_instances=K, seed=3)
    for epoch in range(4):
        batches = _epoch(sampler, epoch)
        assert batches, "no batches"
        for batch in batches:
            assert len(batch) == P * K
            per_label = Counter(LABELS[i] for i in batch)
            assert len(per_label) == P
            assert set(per_label.values()) == {K}
            # the K indices of an identity come as one contiguous group
            for g in range(P):
                group = batch[g * K : (g + 1) * K]
                assert len({LABELS[i] for i in group}) == 1
            assert all(0 <= i < len(LABELS) for i in batch)


def test_pk_len_matches_yielded_batches():
    groups = sum(max(c, K) // K for c in COUNTS.values())  # 2+1+1+1+1+1+2+1+1+1 = 12
    sampler = PKBatchSampler(LABELS, batch_size=P * K, num_instances=K, seed=0)
    assert len(sampler) == groups // P == 3
    for epoch in range(5):
        assert len(_epoch(sampler, epoch)) == len(sampler)
    sampler2 = PKBatchSampler(LABELS, batch_size=2 * K, num_instances=K, seed=0)
    assert len(sampler2) == 6
    for epoch in range(5):
        assert len(_epoch(sampler2, epoch)) == 6


def test_pk_identities_with_fewer_than_k_images_are_repeated():
    counts = {0: 1, 1: 2, 2: 3, 3: 4, 4: 4, 5: 4}
    labels = _labels(counts)
    sampler = PKBatchSampler(labels, batch_size=6 * K, num_instances=K, seed=1)
    seen = set()
    for epoch in range(3):
        for batch in _epoch(sampler, epoch):
            per_label: dict[int, list[int]] = {}
            for i in batch:
                per_label.setdefault(labels[i], []).append(i)
            assert set(per_label) == set(counts)  # P = all 6 identities
            for label, idx in per_label.items():
                assert len(idx) == K
                own = {i for i, lb in enumerate(labels) if lb == label}
                assert set(idx) <= own
                if counts[label] >= K:
                    assert len(set(idx)) == K  # no repeats when there are enough images
                else:
                    assert len(set(idx)) <= counts[label]  # repeated indices
            seen.update(per_label)
    assert seen == set(counts)


def test_pk_small_identity_is_drawn():
    # identity 2 has 2 images and is drawn in some epoch with exactly K indices from its own 2 images
    sampler = PKBatchSampler(LABELS, batch_size=P * K, num_instances=K, seed=0)
    own = {i for i, lb in enumerate(LABELS) if lb == 2}
    hits = 0
    for epoch in range(10):
        for batch in _epoch(sampler, epoch):
            idx = [i for i in batch if LABELS[i] == 2]
            if idx:
                hits += 1
                assert len(idx) == K and set(idx) <= own
    assert hits > 0


def test_pk_same_seed_epoch_identical_different_epoch_differs():
    a = PKBatchSampler(LABELS, batch_size=P * K, num_instances=K, seed=7)
    b = PKBatchSampler(LABELS, batch_size=P * K, num_instances=K, seed=7)
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(a, 2) == _epoch(a, 2)  # re-iterating an epoch repeats it
    assert _epoch(a, 2) != _epoch(a, 3)
    c = PKBatchSampler(LABELS, batch_size=P * K, num_instances=K, seed=8)
    assert _epoch(c, 2) != _epoch(a, 2)


def test_pk_ranks_split_the_global_batch():
    for epoch in (0, 1, 5):
        full = _epoch(PKBatchSampler(LABELS, P * K, K, seed=11, rank=0, world_size=1), epoch)
        r0 = _epoch(PKBatchSampler(LABELS, P * K, K, seed=11, rank=0, world_size=2), epoch)
        r1 = _epoch(PKBatchSampler(LABELS, P * K, K, seed=11, rank=1, world_size=2), epoch)
        assert len(r0) == len(r1) == len(full)
        for f, x, y in zip(full, r0, r1):
            assert len(x) == len(y) == P * K // 2
            assert x + y == f
            assert not {LABELS[i] for i in x} & {LABELS[i] for i in y}
            assert not set(x) & set(y)


def test_pk_too_few_identities():
    labels = _labels({0: 4, 1: 4, 2: 4})
    with pytest.raises(ConfigError) as excinfo:
        PKBatchSampler(labels, batch_size=4 * K, num_instances=K)
    assert isinstance(excinfo.value, UserError)
    assert "only 3" in str(excinfo.value)


def test_pk_batch_not_multiple_of_k():
    with pytest.raises(ConfigError, match="DATALOADER.NUM_INSTANCE"):
        PKBatchSampler(LABELS, batch_size=15, num_instances=K)


def test_pk_p_not_divisible_by_world_size():
    with pytest.raises(ConfigError):
        PKBatchSampler(LABELS, batch_size=3 * K, num_instances=K, rank=0, world_size=2)


# ------------------------------------------------------------------------------------------------
# RandomBatchSampler
# ------------------------------------------------------------------------------------------------
def test_random_batches_are_a_permutation_without_repeats():
    sampler = RandomBatchSampler(num_items=50, batch_size=8, seed=5)
    assert len(sampler) == 6
    for epoch in range(3):
        batches = _epoch(sampler, epoch)
        assert len(batches) == len(sampler) == 6
        assert all(len(b) == 8 for b in batches)
        flat = [i for b in batches for i in b]
        assert len(set(flat)) == len(flat) == 48
        assert set(flat) <= set(range(50))
    exact = RandomBatchSampler(num_items=48, batch_size=8, seed=5)
    flat = [i for b in _epoch(exact, 0) for i in b]
    assert sorted(flat) == list(range(48))
    assert flat != list(range(48))  # shuffled


def test_random_reproducible_and_epoch_dependent():
    a = RandomBatchSampler(40, 8, seed=1)
    b = RandomBatchSampler(40, 8, seed=1)
    assert _epoch(a, 4) == _epoch(b, 4)
    assert _epoch(a, 4) != _epoch(a, 5)
    assert _epoch(RandomBatchSampler(40, 8, seed=2), 4) != _epoch(a, 4)


def test_random_ranks_split_the_global_batch():
    for epoch in (0, 3):
        full = _epoch(RandomBatchSampler(50, 8, seed=9, rank=0, world_size=1), epoch)
        r0 = _epoch(RandomBatchSampler(50, 8, seed=9, rank=0, world_size=2), epoch)
        r1 = _epoch(RandomBatchSampler(50, 8, seed=9, rank=1, world_size=2), epoch)
        assert len(r0) == len(r1) == len(full) == 6
        for f, x, y in zip(full, r0, r1):
            assert len(x) == len(y) == 4
            assert x + y == f
            assert not set(x) & set(y)


def test_random_errors():
    with pytest.raises(ConfigError):
        RandomBatchSampler(5, 8)
    with pytest.raises(ConfigError):
        RandomBatchSampler(50, 9, world_size=2)


def _seeded(world_size: int, rank: int, epoch: int = 3) -> list:
    batches = SeededBatches(PKBatchSampler(LABELS, P * K, K, seed=5, rank=rank, world_size=world_size))
    batches.set_epoch(epoch)
    return list(batches)


def test_seeded_batches_pair_every_index_with_a_seed_of_its_position():
    plain = PKBatchSampler(LABELS, P * K, K, seed=5)
    plain.set_epoch(3)
    seeded = _seeded(1, 0)
    assert [[index for index, _ in batch] for batch in seeded] == list(plain)
    seeds = [seed for batch in seeded for _, seed in batch]
    assert len(set(seeds)) == len(seeds)  # a repeated image (identity with < K images) gets its own draw
    assert seeded == _seeded(1, 0) and seeded != _seeded(1, 0, epoch=4)


def test_seeded_batches_give_each_sample_the_same_seed_on_any_number_of_processes():
    single = _seeded(1, 0)
    halves = [_seeded(2, 0), _seeded(2, 1)]
    assert [first + second for first, second in zip(*halves)] == single


def test_seeded_batches_skip_the_batches_an_interrupted_epoch_trained():
    batches = SeededBatches(PKBatchSampler(LABELS, P * K, K, seed=5))
    batches.set_epoch(3)
    full = list(batches)
    batches.skip_batches(2)
    assert list(batches) == full[2:]
    assert list(batches) == full  # the skip applies to one iteration only
    assert len(batches) == len(full)


def test_training_augmentation_does_not_depend_on_the_number_of_workers(tiny_opts, market_root, tmp_path):
    # each sample's random transform is seeded by its position in the epoch, not by the worker that loads it
    batches = {}
    for workers in ("0", "2"):
        cfg = load_config(
            None,
            tiny_opts(market_root, tmp_path / workers, **{"DATALOADER.NUM_WORKERS": workers, "INPUT.RE_PROB": "0.5"}),
        )
        loader = build_data(cfg).train_loader
        loader.batch_sampler.set_epoch(2)
        loader.generator.manual_seed(11)
        batches[workers] = [batch["image"] for batch in loader]
    assert len(batches["0"]) == len(batches["2"]) > 1
    for a, b in zip(batches["0"], batches["2"]):
        assert torch.equal(a, b)
