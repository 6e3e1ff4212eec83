"""Test helper: a tiny dataset tree in the official Market-1501 layout.

Usage (from a test module in tests/, which pytest puts on sys.path)::

    from market_tree import make_market_tree

    info = make_market_tree(tmp_path)             # writes tmp_path/market1501/...
    cfg = load_config(None, ["DATASETS.ROOT_DIR", str(tmp_path), ...])

Layout written under ``root/<folder_name>/`` (``folder_name`` defaults to ``market1501``)::

    bounding_box_train/  train_ids identities x images_per_id images        + JUNK_PER_SPLIT junk (-1_...)
    query/               one image per test identity
    bounding_box_test/   test_ids identities x images_per_id images
                         + DISTRACTORS distractors (0000_...) + JUNK_PER_SPLIT junk (-1_...)

File names follow Market-1501: ``PPPP_cCsS_FFFFFF_NN.jpg`` (pid, 1-based camera, sequence, frame, box),
junk ``-1_c1s1_FFFFFF_NN.jpg``, distractors ``0000_cCs1_FFFFFF_NN.jpg``. Train pids are the even numbers
2, 4, 6, ... (so relabelling to 0..C-1 is visible); test pids the odd numbers 1, 3, 5, ... (disjoint from
train, as in Market-1501). Cameras cycle over 1..`cameras`. Every query (camera q) has gallery images of
its identity from at least one other camera (needs cameras >= 2 and images_per_id >= 2).

Images are JPEGs of size (height, width) = `size`, filled with a colour that depends only on the
identity (plus small per-image noise drawn from `seed`), so an identity is learnable from its pixels.
Distractors and junk get grey-ish noise.

The returned dict (all counts are what a correct loader must report; junk is never counted):

    folder            Path of the dataset folder (root/market1501)
    train_pids        list of raw train pids, increasing
    test_pids         list of raw test pids, increasing
    train_images      number of train images (junk excluded)         = train_ids * images_per_id
    query_images      number of query images                         = test_ids
    gallery_images    number of gallery images incl. distractors     = test_ids * images_per_id + DISTRACTORS
    train_ids / query_ids / gallery_ids
                      distinct pids per split (gallery_ids counts the distractor pid 0: test_ids + 1)
    distractors       number of pid-0 gallery images
    junk              {"train": n, "gallery": n}: junk files written per split (query has none)
    cameras           number of cameras
    query_cams        {query file name: 0-based camera}
    colours           {raw pid: (r, g, b)} base colour of every identity
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DISTRACTORS = 3
JUNK_PER_SPLIT = 2


def identity_colour(pid: int) -> tuple[int, int, int]:
    """A well-separated RGB colour per pid (deterministic, independent of the seed)."""
    rng = np.random.default_rng(10_000 + pid)
    return tuple(int(v) for v in rng.integers(20, 236, size=3))


def _write_jpeg(path: Path, colour, size, rng: np.random.Generator, noise: int = 8) -> None:
    height, width = size
    base = np.asarray(colour, dtype=np.int16)[None, None, :]
    pixels = base + rng.integers(-noise, noise + 1, size=(height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path, format="JPEG", quality=95)


def make_market_tree(
    root,
    train_ids: int = 6,
    test_ids: int = 5,
    images_per_id: int = 4,
    cameras: int = 3,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
    folder_name: str = "market1501",
) -> dict:
    """Write a Market-1501-style tree under ``root/folder_name`` and return its expected counts (see module doc).

    `folder_name` may be "Market-1501-v15.09.15" (the other name the loader accepts).
    """
    if cameras < 2 or images_per_id < 2:
        raise ValueError("make_market_tree needs cameras >= 2 and images_per_id >= 2 (cross-camera matches)")
    rng = np.random.default_rng(seed)
    folder = Path(root) / folder_name
    dirs = {name: folder / name for name in ("bounding_box_train", "query", "bounding_box_test")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    frame = iter(range(1, 10**6))

    def name(pid: int, cam: int, box: int = 0) -> str:
        prefix = "-1" if pid == -1 else f"{pid:04d}"
        return f"{prefix}_c{cam}s1_{next(frame):06d}_{box:02d}.jpg"

    train_pids = [2 * (i + 1) for i in range(train_ids)]
    test_pids = [2 * i + 1 for i in range(test_ids)]
    colours = {pid: identity_colour(pid) for pid in train_pids + test_pids}

    for pid in train_pids:
        for k in range(images_per_id):
            cam = k % cameras + 1
            _write_jpeg(dirs["bounding_box_train"] / name(pid, cam, k), colours[pid], size, rng)

    query_cams = {}
    for i, pid in enumerate(test_pids):
        qcam = i % cameras + 1
        qname = name(pid, qcam)
        _write_jpeg(dirs["query"] / qname, colours[pid], size, rng)
        query_cams[qname] = qcam - 1
        for k in range(images_per_id):
            # start at the camera after the query's: the first gallery image is always cross-camera
            cam = (qcam + k) % cameras + 1
            _write_jpeg(dirs["bounding_box_test"] / name(pid, cam, k + 1), colours[pid], size, rng)

    for j in range(DISTRACTORS):
        _write_jpeg(dirs["bounding_box_test"] / name(0, j % cameras + 1), (128, 128, 128), size, rng, noise=60)
    for split in ("bounding_box_train", "bounding_box_test"):
        for j in range(JUNK_PER_SPLIT):
            _write_jpeg(dirs[split] / name(-1, j % cameras + 1), (100, 110, 120), size, rng, noise=60)

    return {
        "folder": folder,
        "train_pids": train_pids,
        "test_pids": test_pids,
        "train_images": train_ids * images_per_id,
        "query_images": test_ids,
        "gallery_images": test_ids * images_per_id + DISTRACTORS,
        "train_ids": train_ids,
        "query_ids": test_ids,
        "gallery_ids": test_ids + 1,
        "distractors": DISTRACTORS,
        "junk": {"train": JUNK_PER_SPLIT, "gallery": JUNK_PER_SPLIT},
        "cameras": cameras,
        "query_cams": query_cams,
        "colours": colours,
    }
