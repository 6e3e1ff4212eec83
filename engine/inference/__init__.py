"""After training: embed any images with a trained model, and search a gallery of embeddings with a faiss index.

    from engine.inference.embedding import load_embedder
    from engine.inference.gallery_index import GalleryIndex

    embedder = load_embedder("configs/softmax_triplet.yml", "logs/market/best.pt")  # config + checkpoint or run
    feats = embedder.embed(paths)                                   # Embeddings: features, paths, model identity
    hits = GalleryIndex.load("gallery.index").search(feats, k=10)   # distances, indices, paths per query

- image_sources.py: what to embed: a folder, a CSV with a `path` column, or DATASET:split of a configured dataset;
- embedding.py: ImageEmbedder (test.py's embedding of image files, unreadable ones skipped and listed) and the
  features file (.npz) with the identity of the model that wrote it;
- gallery_index.py: GalleryIndex, exact / IVF / HNSW over faiss, saved with a JSON sidecar; it refuses queries of
  another dimension or from another model;
- onnx_export.py, export_metadata.py: the test-time embedder as an ONNX file whose metadata say how to feed it
  (tools/export.py), checked in onnxruntime against PyTorch.

The command-line tools are tools/export.py, tools/embed.py and tools/index.py; tools/benchmark_export.py and
tools/benchmark_index.py measure them.
"""
