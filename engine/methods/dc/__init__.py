"""Divide & Conquer (seed 003), built in parts: the re-clustering of the training set (clustering.py), the
learners' masks over one embedding (masks.py) and the per-cluster adaptbalanced batches (sampler.py; the dataset
returns each item's cluster). The training method that composes them (its keys, the mask optimizer group and
the schedule) is not registered yet: SOLVER.METHOD does not offer it."""
