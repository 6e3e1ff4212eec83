"""After training: embed any images with a trained model, and search a gallery of embeddings with a faiss index.

    from engine.inference.embedding import load_embedder
    from engine.inference.gallery_index import GalleryIndex

    embedder = load_embedder("configs/bot_market.yml", "logs/market/best.pt")  # config + checkpoint (or run folder)
    feats = embedder.embed(paths)                                             # Embeddings: features, paths, identity
    hits = GalleryIndex.load("gallery.index").search(feats, k=10)             # distances, indices, paths per query

- image_sources.py: what to embed: a folder, a CSV with a `path` column, or DATASET:split of a configured dataset;
- embedding.py: ImageEmbedder (test.py's embedding of image files, unreadable ones skipped and listed) and the
  features file (.npz) with the identity of the model that wrote it;
- gallery_index.py: GalleryIndex, exact / IVF / HNSW over faiss, saved with a JSON sidecar; it refuses queries of
  another dimension or from another model.

The command-line tools are tools/embed.py and tools/index.py; tools/benchmark_index.py measures the index kinds.
"""
