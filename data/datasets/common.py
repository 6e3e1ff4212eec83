"""What the dataset loaders share: their error, finding a dataset's folder under DATASETS.ROOT_DIR, listing
the images of a folder, and checking that the images a list file names exist."""

from __future__ import annotations

import os
from pathlib import Path

from config.errors import UserError


class DatasetLayoutError(UserError):
    """A dataset folder is missing or does not have the expected layout."""


def find_dataset_folder(root_dir: str | Path, names: tuple[str, ...], dataset: str, expected: str) -> Path:
    """The first of `names` that exists under `root_dir`, or a DatasetLayoutError listing what was looked for."""
    root_dir = Path(root_dir)
    for name in names:
        if (root_dir / name).is_dir():
            return root_dir / name
    looked = ", ".join(str(root_dir / n) for n in names)
    raise DatasetLayoutError(f"{dataset} not found: looked for {looked} (DATASETS.ROOT_DIR = {root_dir}); {expected}")


def list_images(folder: str | Path, suffixes: tuple[str, ...], hidden_prefix: str = "._") -> list[str]:
    """Paths of the image files directly in `folder`, sorted by file name.

    An image is a regular file (links followed) whose suffix, in any case, is one of `suffixes` (lower case,
    with the dot) and whose name does not start with `hidden_prefix`: '._' skips the macOS resource forks
    some archives carry, '.' every hidden file. Paths are joined as os.scandir joins them, onto `folder` as
    given. One directory scan, no stat per file.
    """
    with os.scandir(folder) as entries:
        images = [
            entry
            for entry in entries
            if not entry.name.startswith(hidden_prefix)
            and os.path.splitext(entry.name)[1].lower() in suffixes
            and entry.is_file()
        ]
    return [entry.path for entry in sorted(images, key=lambda entry: entry.name)]


class FileListing:
    """Whether files exist, by one directory listing per folder: cheap for the 100k+ images a list file may
    name, and no image is opened."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}

    def exists(self, path: Path) -> bool:
        """Whether `path` is in its folder's listing (an unreadable or missing folder lists nothing)."""
        names = self._names.get(path.parent)
        if names is None:
            try:
                names = set(os.listdir(path.parent))
            except OSError:
                names = set()
            self._names[path.parent] = names
        # A stat for what a listing cannot match: a case-insensitive file system, a '..' in the path.
        return path.name in names or path.is_file()
