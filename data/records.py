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
    """The splits of a benchmark. Train labels are contiguous 0..C-1; query/gallery keep raw ids.

    protocol: 'reid' (query vs gallery, same-id-same-camera gallery items removed, CMC/mAP/mINP) or
    'retrieval' (Recall@K, MAP@R, NMI). query_is_gallery: the query set is also the gallery (CUB, Cars,
    SOP, VehicleID retrieval); `gallery` then holds the same list and each query is excluded from its own
    gallery by index. recall_ks: the dataset's customary K list. extra_trials: further (query, gallery)
    draws of a randomised protocol (VehicleID re-ID); the reported numbers are the mean over all trials.
    notes: what the loader found worth telling the user (a partial copy, skipped folders, the list used), one
    sentence each; build_data logs each as a warning beside the dataset's table.
    """

    name: str
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    protocol: str = "reid"
    query_is_gallery: bool = False
    recall_ks: tuple[int, ...] = (1, 5, 10)
    extra_trials: list[tuple[list[Record], list[Record]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def eval_records(self) -> list[Record]:
        """The records embedded for evaluation, each once: query then gallery (no gallery when it is the query set)."""
        return list(self.query) if self.query_is_gallery else list(self.query) + list(self.gallery)

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


def zero_shot_splits(
    name: str, train: list[Record], test: list[Record], recall_ks: tuple[int, ...], notes: list[str] | None = None
) -> DatasetSplits:
    """A retrieval benchmark tested on unseen classes whose query set is its gallery (CUB, Cars, SOP):
    train labels relabelled 0..C-1, test labels kept, each query excluded from its own gallery by index."""
    return DatasetSplits(
        name=name,
        train=relabel(train),
        query=test,
        gallery=test,
        protocol="retrieval",
        query_is_gallery=True,
        recall_ks=recall_ks,
        notes=list(notes or []),
    )
