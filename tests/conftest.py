"""Fixtures shared by the test modules: tiny dataset trees in the official layouts, and a free TCP port.

Each tree fixture returns its builder function (a factory: call it with the root folder, as often as
needed). The builders keep no state between calls, so the fixtures are session-scoped and module-scoped
fixtures may use them. Loaders never decode images, so most trees hold empty or 8x8 files; `fill_images`
gives every image of a tree real pixels for the tests that train on it.

    make_market_tree     Market-1501 (PPPP_cCsS_FFFFFF_NN.jpg, junk and distractors), returns its counts
    make_duke            DukeMTMC-reID (PPPP_cC_fFFFFFFF.jpg), returns the dataset folder
    make_msmt17          MSMT17 V1/V2, list-file or folder form, returns the folder and the listed entries
    make_vehicleid       VehicleID with the small/medium/large test lists, returns the folder and the lists
    make_split_folders   a user tree with train/, query/, gallery/ class folders
    make_cub_tree        CUB-200-2011 (images/NNN.Class/), returns the dataset folder
    make_cars_tree       Cars196 (cars_annos.mat + car_ims/), returns the folder and the annotation entries
    make_sop_tree        Stanford Online Products (Ebay_*.txt), returns the folder and the list sizes
    make_inshop_tree     In-shop Clothes (list_eval_partition.txt), returns the folder, list and entries
    fill_images          writes real pixels into every image file under a root
    free_port            a TCP port nobody listens on, for torchrun's --master_port
"""

from __future__ import annotations

import io
import socket
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _touch(path: Path) -> Path:
    """An empty file (loaders never open images), its folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _jpeg_bytes(colour=(120, 30, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


_JPEG = _jpeg_bytes()


def _write_image(path: Path) -> None:
    """An 8x8 JPEG (the same bytes every time), its folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_JPEG)


# ---------------------------------------------------------------------------------------------------------
# Market-1501
# ---------------------------------------------------------------------------------------------------------

MARKET_DISTRACTORS = 3
MARKET_JUNK_PER_SPLIT = 2


def _identity_colour(pid: int) -> tuple[int, int, int]:
    """A well-separated RGB colour per pid (deterministic, independent of the seed)."""
    rng = np.random.default_rng(10_000 + pid)
    return tuple(int(v) for v in rng.integers(20, 236, size=3))


def _write_jpeg(path: Path, colour, size, rng: np.random.Generator, noise: int = 8) -> None:
    height, width = size
    base = np.asarray(colour, dtype=np.int16)[None, None, :]
    pixels = base + rng.integers(-noise, noise + 1, size=(height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path, format="JPEG", quality=95)


def _market_tree(
    root,
    train_ids: int = 6,
    test_ids: int = 5,
    images_per_id: int = 4,
    cameras: int = 3,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
    folder_name: str = "market1501",
) -> dict:
    """Write a tiny tree in the official Market-1501 layout under ``root/folder_name`` and return its counts.

    `folder_name` may be "Market-1501-v15.09.15" (the other name the loader accepts). Layout::

        bounding_box_train/  train_ids identities x images_per_id images   + MARKET_JUNK_PER_SPLIT junk (-1_...)
        query/               one image per test identity
        bounding_box_test/   test_ids identities x images_per_id images
                             + MARKET_DISTRACTORS distractors (0000_...) + MARKET_JUNK_PER_SPLIT junk (-1_...)

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
    colours = {pid: _identity_colour(pid) for pid in train_pids + test_pids}

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

    for j in range(MARKET_DISTRACTORS):
        _write_jpeg(dirs["bounding_box_test"] / name(0, j % cameras + 1), (128, 128, 128), size, rng, noise=60)
    for split in ("bounding_box_train", "bounding_box_test"):
        for j in range(MARKET_JUNK_PER_SPLIT):
            _write_jpeg(dirs[split] / name(-1, j % cameras + 1), (100, 110, 120), size, rng, noise=60)

    return {
        "folder": folder,
        "train_pids": train_pids,
        "test_pids": test_pids,
        "train_images": train_ids * images_per_id,
        "query_images": test_ids,
        "gallery_images": test_ids * images_per_id + MARKET_DISTRACTORS,
        "train_ids": train_ids,
        "query_ids": test_ids,
        "gallery_ids": test_ids + 1,
        "distractors": MARKET_DISTRACTORS,
        "junk": {"train": MARKET_JUNK_PER_SPLIT, "gallery": MARKET_JUNK_PER_SPLIT},
        "cameras": cameras,
        "query_cams": query_cams,
        "colours": colours,
    }


# ---------------------------------------------------------------------------------------------------------
# DukeMTMC-reID, MSMT17, VehicleID, user folder trees (empty image files)
# ---------------------------------------------------------------------------------------------------------


def _duke_tree(root: Path, folder: str = "dukemtmc-reid/DukeMTMC-reID") -> Path:
    """Train pids 5, 7, 12 (4 images each, cameras 1..4); test pids 1, 2 (1 query on camera 1 / 2, 3 gallery
    images each) and 2 gallery-only pids (4000, 4001); a Thumbs.db in the train folder. Returns the folder."""
    base = root / folder
    frame = iter(range(40_000, 10**6))
    for pid in (5, 7, 12):
        for k in range(4):
            _touch(base / "bounding_box_train" / f"{pid:04d}_c{k + 1}_f{next(frame):07d}.jpg")
    for i, pid in enumerate((1, 2)):
        _touch(base / "query" / f"{pid:04d}_c{i + 1}_f{next(frame):07d}.jpg")
        for k in range(3):
            _touch(base / "bounding_box_test" / f"{pid:04d}_c{(i + k + 1) % 8 + 1}_f{next(frame):07d}.jpg")
    for pid in (4000, 4001):  # gallery-only identities (Duke's "distractor" ids have ordinary pids)
        _touch(base / "bounding_box_test" / f"{pid:04d}_c8_f{next(frame):07d}.jpg")
    (base / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")
    return base


def _msmt_name(pid: int, index: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_{index:03d}_{cam:02d}_0303morning_{frame:04d}_0.jpg"


def _msmt17_tree(
    root: Path, folder: str = "msmt17/MSMT17_V1", train_dir: str = "train", test_dir: str = "test", lists: bool = True
) -> dict:
    """Train pids 0..3 (3 images: 2 in list_train, 1 in list_val); test pids 0..2 (1 query, 3 gallery).

    With lists=False: the folder form train/<pid>/, query/<pid>/, gallery/<pid>/ (train_dir names train/).
    Camera of image k of pid p: (p + k) % 15 + 1 (1-based), so cameras 1..6 and 15 appear.
    Returns {"base": the dataset folder, "entries": {split: [(relative path, pid, camera)]}}.
    """
    base = root / folder
    frame = iter(range(1, 10**6))
    entries: dict[str, list[tuple[str, int, int]]] = {"train": [], "val": [], "query": [], "gallery": []}
    for pid in range(4):
        for k in range(3):
            cam = (pid + k) % 15 + 1
            entries["train" if k < 2 else "val"].append((f"{pid:04d}/{_msmt_name(pid, k, cam, next(frame))}", pid, cam))
    for pid in range(3):
        entries["query"].append((f"{pid:04d}/{_msmt_name(pid, 0, 15, next(frame))}", pid, 15))
        for k in range(3):
            cam = (pid + k) % 15 + 1
            entries["gallery"].append((f"{pid:04d}/{_msmt_name(pid, k + 1, cam, next(frame))}", pid, cam))
    if lists:
        dirs = {"train": train_dir, "val": train_dir, "query": test_dir, "gallery": test_dir}
        for split, items in entries.items():
            for rel, _, _ in items:
                _touch(base / dirs[split] / rel)
            (base / f"list_{split}.txt").write_text("".join(f"{rel} {pid}\n" for rel, pid, _ in items))
        _touch(base / train_dir / "0000" / _msmt_name(0, 99, 1, 9999))  # on disk, in no list: not loaded
    else:
        dirs = {"train": train_dir, "val": train_dir, "query": "query", "gallery": "gallery"}
        for split, items in entries.items():
            for rel, _, _ in items:
                _touch(base / dirs[split] / rel)
    return {"base": base, "entries": entries}


# Images per vehicle id of the small test list; vehicle 101 has a single image
_VEHICLE_TEST_COUNTS = {101: 1, 102: 5, 103: 5, 104: 5, 105: 5, 106: 5, 107: 5}


def _vehicleid_tree(root: Path, folder: str = "VehicleID_V1.0") -> dict:
    """Train vehicles 1..5 (3 images each); the small test list as in _VEHICLE_TEST_COUNTS, medium adds vehicle
    201 (2 images), large also 301 (1) and 302 (2). Returns {"base": the dataset folder, "lists": {list:
    [(image name, vehicle id)]}, "test_counts": images per vehicle id of the small list}."""
    base = root / folder
    number = iter(range(1, 10**6))
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "small": [], "medium": [], "large": []}
    for vid in range(1, 6):
        lists["train"] += [(f"{next(number):07d}", vid) for _ in range(3)]
    for vid, count in _VEHICLE_TEST_COUNTS.items():
        lists["small"] += [(f"{next(number):07d}", vid) for _ in range(count)]
    lists["medium"] = lists["small"] + [(f"{next(number):07d}", 201) for _ in range(2)]
    lists["large"] = lists["medium"] + [(f"{next(number):07d}", vid) for vid in (301, 302, 302)]
    files = {
        "train": "train_list.txt",
        "small": "test_list_800.txt",
        "medium": "test_list_1600.txt",
        "large": "test_list_2400.txt",
    }
    for key, items in lists.items():
        for name, _ in items:
            _touch(base / "image" / f"{name}.jpg")
        path = base / "train_test_split" / files[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name} {vid}\n" for name, vid in items))
    return {"base": base, "lists": lists, "test_counts": dict(_VEHICLE_TEST_COUNTS)}


def _write_tiny_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (10, 20, 30)).save(path, format="JPEG")


def _split_folders(root: Path) -> None:
    """train/ (zebra, ant, bee: 2 JPEGs each), query/ (cat, dog: 1 .png each), gallery/ (cat, dog: .jpeg, .bmp,
    .webp each, upper-case suffixes for dog) plus a resource fork, a text file and an empty class folder."""
    for cls in ("zebra", "ant", "bee"):
        for k in range(2):
            _write_tiny_jpeg(root / "train" / cls / f"{k}.jpg")
    for cls in ("cat", "dog"):
        _touch(root / "query" / cls / "q.png")
        for ext in ("jpeg", "bmp", "webp"):
            _touch(root / "gallery" / cls / f"g.{ext.upper() if cls == 'dog' else ext}")
    _touch(root / "gallery" / "cat" / "._g.jpg")  # macOS resource fork: skipped
    _touch(root / "gallery" / "cat" / "notes.txt")
    (root / "gallery" / "empty_class").mkdir()


# ---------------------------------------------------------------------------------------------------------
# Retrieval benchmarks: CUB-200-2011, Cars196, Stanford Online Products, In-shop Clothes (8x8 JPEGs)
# ---------------------------------------------------------------------------------------------------------


def _cub_tree(
    root: Path, num_classes: int = 6, per_class: int = 3, folder_name: str = "CUB_200_2011", resource_forks: bool = True
) -> Path:
    """images/NNN.Class_NNN/Class_NNN_000K.jpg; `._` twins of every image when `resource_forks`."""
    folder = root / folder_name
    images = folder / "images"
    for c in range(1, num_classes + 1):
        class_dir = images / f"{c:03d}.Class_{c:03d}"
        for k in range(per_class):
            _write_image(class_dir / f"Class_{c:03d}_{k:04d}.jpg")
            if resource_forks:
                (class_dir / f"._Class_{c:03d}_{k:04d}.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    images.mkdir(parents=True, exist_ok=True)
    (images / ".DS_Store").write_bytes(b"junk")
    (images / "._001.Class_001").write_bytes(b"junk")
    (folder / "README").write_text("CUB")
    return folder


_CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


def _write_cars_annos(mat_path: Path, entries: list[tuple[str, int, int]]) -> None:
    """cars_annos.mat as the official one: a 1xN struct array `annotations` (+ `class_names`)."""
    import scipy.io

    annotations = np.zeros((1, len(entries)), dtype=[(f, object) for f in _CARS_FIELDS])
    for i, (rel_path, label, test) in enumerate(entries):
        annotations[0, i] = (
            rel_path,
            np.uint8(3),
            np.uint8(4),
            np.uint16(60),
            np.uint16(40),
            np.uint8(label),
            np.uint8(test),
        )
    num_classes = max(label for _, label, _ in entries)
    class_names = np.zeros((1, num_classes), dtype=object)
    class_names[0, :] = [f"Make Model {c}" for c in range(1, num_classes + 1)]
    scipy.io.savemat(str(mat_path), {"annotations": annotations, "class_names": class_names})


def _cars_tree(root: Path, num_classes: int = 6, per_class: int = 3, folder_name: str = "cars196") -> dict:
    """car_ims/NNNNNN.jpg in shuffled class order and cars_annos.mat (the official test flag alternates).
    Returns {"folder": the dataset folder, "entries": [(relative path, class, test flag)]}."""
    folder = root / folder_name
    rng = np.random.default_rng(0)
    labels = [c for c in range(1, num_classes + 1) for _ in range(per_class)]
    rng.shuffle(labels)  # the official file is not sorted by class
    entries = []
    for i, label in enumerate(labels, start=1):
        rel_path = f"car_ims/{i:06d}.jpg"
        _write_image(folder / rel_path)
        entries.append((rel_path, int(label), i % 2))  # the official test flag, mixed over all classes
    _write_cars_annos(folder / "cars_annos.mat", entries)
    return {"folder": folder, "entries": entries}


def _sop_tree(root: Path, folder_name: str = "Stanford_Online_Products") -> dict:
    """Train classes 1-4 (2 or 3 images), test classes 5-8 (2 or 3 images), as in the Ebay_*.txt lists."""
    folder = root / folder_name
    folder.mkdir(parents=True)
    supers = ["bicycle_final", "chair_final"]
    image_id = iter(range(1, 1000))
    counts = {}
    for list_name, classes in (("Ebay_train.txt", range(1, 5)), ("Ebay_test.txt", range(5, 9))):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            super_id = 1 + c % 2
            for k in range(2 + c % 2):
                rel_path = f"{supers[super_id - 1]}/{111085122000 + c}_{k}.JPG"
                _write_image(folder / rel_path)
                lines.append(f"{next(image_id)} {c} {super_id} {rel_path}")
        (folder / list_name).write_text("\n".join(lines) + "\n")
        counts[list_name] = len(lines) - 1
    return {"folder": folder, "counts": counts}


def _inshop_tree(root: Path, folder_name: str = "Inshop_Clothes", official: bool = False) -> dict:
    """Train items 2, 4, 7 (3 images each); test items 10, 11, 13 (1 query + 2 gallery images each)."""
    folder = root / folder_name
    image_root = folder / "Img" if official else folder
    list_path = folder / "Eval" / "list_eval_partition.txt" if official else folder / "list_eval_partition.txt"
    entries = []
    for item, statuses in [
        (2, ["train"] * 3),
        (4, ["train"] * 3),
        (7, ["train"] * 3),
        (10, ["query", "gallery", "gallery"]),
        (11, ["gallery", "query", "gallery"]),
        (13, ["query", "gallery", "gallery"]),
    ]:
        for k, status in enumerate(statuses):
            name = f"img/WOMEN/Dresses/id_{item:08d}/{k + 1:02d}_1_front.jpg"
            _write_image(image_root / name)
            entries.append((name, item, status))
    list_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(len(entries)), "image_name item_id evaluation_status"]
    lines += [f"{name:<60} id_{item:08d}  {status}" for name, item, status in entries]  # padded like the original
    list_path.write_text("\n".join(lines) + "\n")
    return {"folder": folder, "list_path": list_path, "entries": entries, "image_root": image_root}


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _fill_images(root: Path) -> None:
    """Give every image file of the tree real pixels (a colour from its folder, so classes differ)."""
    for path in root.rglob("*"):
        if path.suffix.lower() in _IMAGE_SUFFIXES and not path.name.startswith("._"):
            seed = zlib.crc32(str(path.parent).encode())
            colour = (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
            Image.new("RGB", (16, 32), colour).save(path, format="JPEG")


# ---------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def make_market_tree() -> Callable[..., dict]:
    """Builder of a Market-1501 tree: make_market_tree(root, train_ids=6, test_ids=5, ...) -> its counts."""
    return _market_tree


@pytest.fixture(scope="session")
def make_duke() -> Callable[..., Path]:
    """Builder of a DukeMTMC-reID tree: make_duke(root, folder=...) -> the dataset folder."""
    return _duke_tree


@pytest.fixture(scope="session")
def make_msmt17() -> Callable[..., dict]:
    """Builder of an MSMT17 tree: make_msmt17(root, folder=..., train_dir=..., test_dir=..., lists=True)."""
    return _msmt17_tree


@pytest.fixture(scope="session")
def make_vehicleid() -> Callable[..., dict]:
    """Builder of a VehicleID tree: make_vehicleid(root, folder=...) -> folder, lists and test counts."""
    return _vehicleid_tree


@pytest.fixture(scope="session")
def make_split_folders() -> Callable[[Path], None]:
    """Builder of a user tree with train/, query/ and gallery/ class folders: make_split_folders(root)."""
    return _split_folders


@pytest.fixture(scope="session")
def make_cub_tree() -> Callable[..., Path]:
    """Builder of a CUB-200-2011 tree: make_cub_tree(root, num_classes=6, per_class=3, ...) -> the folder."""
    return _cub_tree


@pytest.fixture(scope="session")
def make_cars_tree() -> Callable[..., dict]:
    """Builder of a Cars196 tree: make_cars_tree(root, num_classes=6, per_class=3, folder_name=...)."""
    return _cars_tree


@pytest.fixture(scope="session")
def make_sop_tree() -> Callable[..., dict]:
    """Builder of a Stanford Online Products tree: make_sop_tree(root, folder_name=...)."""
    return _sop_tree


@pytest.fixture(scope="session")
def make_inshop_tree() -> Callable[..., dict]:
    """Builder of an In-shop Clothes tree: make_inshop_tree(root, folder_name=..., official=False)."""
    return _inshop_tree


@pytest.fixture(scope="session")
def fill_images() -> Callable[[Path], None]:
    """fill_images(root): real pixels in every image file under root, for the tests that train on a tree."""
    return _fill_images


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it), for torchrun's --master_port: two test runs
    on one machine never share a fixed port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------
# End-to-end training on a tiny Market-1501 tree
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def market_root(tmp_path_factory, make_market_tree) -> Path:
    """A Market-1501 tree with real pixels a resnet18 learns in seconds (6 train and 5 test identities x 4
    images, 3 cameras, 32x16, seed 0). Shared by the end-to-end modules: a test that damages images copies it
    first. A module that needs another tree defines its own `market_root`."""
    root = tmp_path_factory.mktemp("market_root")
    make_market_tree(root, train_ids=6, test_ids=5, images_per_id=4, cameras=3, size=(32, 16), seed=0)
    return root


def _tiny_opts(root: Path, out: Path, **overrides: str) -> list[str]:
    opts = {
        "MODEL.NAME": "resnet18",
        "MODEL.PRETRAIN_CHOICE": "none",
        "DATASETS.ROOT_DIR": str(root),
        "INPUT.SIZE_TRAIN": "[32, 16]",
        "INPUT.SIZE_TEST": "[32, 16]",
        "SOLVER.IMS_PER_BATCH": "8",
        "DATALOADER.NUM_INSTANCE": "2",
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.MAX_EPOCHS": "3",
        "SOLVER.EVAL_PERIOD": "2",
        "SOLVER.CHECKPOINT_PERIOD": "2",
        "SOLVER.WARMUP_ITERS": "1",
        "SOLVER.LOG_PERIOD": "1",
        "OUTPUT_DIR": str(out),
        "TEST.IMS_PER_BATCH": "16",
    }
    opts.update(overrides)
    return [item for pair in opts.items() for item in pair]


@pytest.fixture(scope="session")
def tiny_opts() -> Callable[..., list[str]]:
    """tiny_opts(root, out, **overrides): the KEY VALUE pairs of a tiny CPU run on `market_root` (a resnet18 from
    scratch on 32x16 images, PK batches of 4 x 2, no workers, 3 epochs, evaluation and checkpoint every 2).
    A module with other settings overrides this fixture with one that passes its own overrides."""
    return _tiny_opts
