"""k-means for NMI (engine/evaluation/retrieval_metrics.py) and Divide & Conquer's re-clustering
(engine/methods/dc/clustering.py): faiss when installed (the published codes' choice), scikit-learn otherwise,
with the same number of Lloyd iterations and one initialisation from the seed."""

from __future__ import annotations

import numpy as np


def kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> tuple[np.ndarray, str]:
    """Cluster ids (int64) of the rows of `x` by k-means with `niter` iterations, and the backend used
    ('faiss' or 'sklearn'). faiss samples its initial centroids from the rows; the fallback is scikit-learn's
    KMeans with one k-means++ initialisation and max_iter = niter (its tolerance may stop it earlier)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        faiss = None
    if faiss is not None:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), verbose=False)
        km.train(x)
        _, assign = km.index.search(x, 1)
        return assign.reshape(-1).astype(np.int64), "faiss"
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=int(seed) % 2**32)
    return km.fit_predict(x).astype(np.int64), "sklearn"
