"""What every dataset loader returns: records and splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Record(NamedTuple):
    """One image: its path, its identity/class label and its camera (-1 when the format has none)."""

    path: str
    label: int
    camid: int


@dataclass
class DatasetSplits:
    """The three splits of a benchmark. Train labels are contiguous 0..C-1; query/gallery keep raw ids."""

    name: str
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    protocol: str = "reid"
    notes: list[str] = field(default_factory=list)

    @property
    def num_train_classes(self) -> int:
        return len({r.label for r in self.train})

    def summary_table(self) -> str:
        """The ids / images / cameras table that reid-strong-baseline prints at start."""
        rows = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        lines = [
            f"Dataset {self.name} statistics:",
            "  ----------------------------------------",
            "  subset   | # ids | # images | # cameras",
            "  ----------------------------------------",
        ]
        for split, records in rows:
            ids = len({r.label for r in records})
            cams = len({r.camid for r in records if r.camid >= 0})
            lines.append(f"  {split:<8} | {ids:5d} | {len(records):8d} | {cams:9d}")
        lines.append("  ----------------------------------------")
        return "\n".join(lines)


def relabel(records: list[Record]) -> list[Record]:
    """Map raw labels to 0..C-1 in increasing order of the raw label."""
    mapping = {raw: new for new, raw in enumerate(sorted({r.label for r in records}))}
    return [Record(r.path, mapping[r.label], r.camid) for r in records]
