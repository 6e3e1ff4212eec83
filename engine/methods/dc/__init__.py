"""Divide & Conquer (seed 003), SOLVER.METHOD dc: the method (method.py) composes the re-clustering of the
training set (features.py, clustering.py), the learners' masks over one embedding (masks.py) and the
per-cluster adaptbalanced batches (sampler.py; the dataset returns each item's cluster)."""
