"""Curve pictures of a run: losses, learning rates and evaluation metrics per epoch, drawn as PNGs.

A training run appends two JSON-lines files to its OUTPUT_DIR:

* ``train_metrics.jsonl``: one object per epoch with ``epoch``, ``iteration``, ``lr`` (a mapping from
  parameter-group name to learning rate, or a single number), ``seconds_per_batch`` and running averages
  of the loss parts: ``loss`` (the total), names ending in ``_loss`` (the loss terms), ``acc`` (training
  accuracy in ``[0, 1]``) and any other number (a statistic a loss reports);
* ``metrics.jsonl``: one object per evaluation and dataset with ``epoch``, ``dataset``, ``protocol``
  (``reid`` or ``retrieval``) and the metrics in ``[0, 1]`` (``mAP``, ``rank1``, ``rank5``, ``mINP`` for
  re-ID; ``R@k``, ``MAP@R``, ``NMI`` for retrieval).

:func:`draw_curves` reads both (:func:`read_history`), builds the figures (:func:`build_figures`) and writes
them into the same folder, replacing earlier versions atomically:

* ``curves_loss.png``: total loss and loss terms; training accuracy (%); statistics;
* ``curves_lr.png``: the learning rate of every parameter group (log scale);
* ``curves_metrics.png``: one panel per dataset with its main metrics (%), the best epoch of the first one
  (``mAP``, else the smallest-k ``R@k``) marked and annotated.

Reading rules: a run in progress may end in a partial line and a resumed run may repeat epochs, so a line
that is not a JSON object with an integer ``epoch`` is skipped with one warning per file, and of two lines
for the same epoch (and, in ``metrics.jsonl``, the same dataset) the later one wins.  Values that are not
finite numbers are drawn as gaps.  A picture with nothing to draw is not written (an older file of that name
is left as it is).  Nothing here raises on bad input: the pictures are a by-product of training and must not
stop it.

Only ``matplotlib.figure.Figure`` with the Agg canvas is used, never ``pyplot``: no global figure registry,
no backend switch, no display needed, and several threads may draw at once.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.reporting.run_files import METRICS_FILE, TRAIN_METRICS_FILE, TRAIN_RECORD_KEYS, atomic_write

if TYPE_CHECKING:  # matplotlib is imported lazily: reading the history must work without it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "LOSS_PICTURE",
    "LR_PICTURE",
    "METRICS_FILE",
    "METRICS_PICTURE",
    "TRAIN_METRICS_FILE",
    "History",
    "build_figures",
    "draw_curves",
    "read_history",
]

logger = logging.getLogger(__name__)

LOSS_PICTURE = "curves_loss.png"
LR_PICTURE = "curves_lr.png"
METRICS_PICTURE = "curves_metrics.png"

DPI = 100
FIGURE_WIDTH = 9.5  # inches; the legends sit to the right of the axes
PANEL_HEIGHT = 3.0  # inches per panel
# Fixed margins in inches (see _arrange): room for the y tick labels and label, the figure and panel
# titles, the x tick labels and label, and the title of the next panel between two panels.
_LEFT_MARGIN = 1.0
_TOP_MARGIN = 0.7
_BOTTOM_MARGIN = 0.6
_PANEL_GAP = 0.45
_LEGEND_PAD = 0.3

# Keys of train_metrics.jsonl that are bookkeeping, not loss parts.
_TRAIN_BOOKKEEPING = frozenset(TRAIN_RECORD_KEYS)
_RECALL_KEY = re.compile(r"^R@(\d+)$")
_REID_METRICS = (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("mINP", "mINP"))
_RETRIEVAL_TAIL = (("MAP@R", "MAP@R"), ("NMI", "NMI"))
_PROTOCOL_NAMES = {"reid": "re-ID", "retrieval": "retrieval"}
# Markers make short series (and single points, which a line alone does not show) visible; on long
# series they only clutter.
_MARKER_LIMIT = 40
# A panel whose positive values span more than this ratio switches to a log axis, so that a loss term of
# 0.1 stays readable next to a centre loss of 12.
_LOG_RATIO = 100.0
_LINE_STYLES = ("-", "--", ":", "-.")


@dataclass
class History:
    """What a run's two JSON-lines files hold, cleaned up.

    Attributes:
        train: the records of ``train_metrics.jsonl``, one per epoch, by increasing epoch.
        evaluations: dataset name -> its records of ``metrics.jsonl``, one per epoch, by increasing epoch;
            datasets in the order of their first line (the first is the run's main dataset).
    """

    train: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when neither file contributed a record."""
        return not self.train and not any(self.evaluations.values())


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
def _epoch_of(record: dict[str, Any]) -> int | None:
    """The record's epoch as an int, or None when it has none usable."""
    epoch = record.get("epoch")
    if isinstance(epoch, bool):
        return None
    if isinstance(epoch, int):
        return epoch if abs(epoch) < 2**62 else None  # the epochs become an int64 array
    if isinstance(epoch, float) and epoch.is_integer():
        return int(epoch)
    return None


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects with an integer ``epoch`` in ``path``, in file order; bad lines are skipped with a
    single warning for the file (the file is re-read after every evaluation, so a warning per line would
    repeat a corrupt file's whole content into the log each time)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        logger.warning("curves: cannot read %s: %s", path, err)
        return []
    records: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except ValueError as err:
            bad.append((number, f"not JSON ({getattr(err, 'msg', err)})"))
            continue
        except RecursionError:  # absurdly nested input: malformed too, never fatal
            bad.append((number, "nested too deeply"))
            continue
        if not isinstance(record, dict):
            bad.append((number, f"a JSON {type(record).__name__}, not an object"))
            continue
        epoch = _epoch_of(record)
        if epoch is None:
            bad.append((number, "no integer 'epoch'"))
            continue
        record["epoch"] = epoch
        records.append(record)
    if bad:
        number, reason = bad[0]
        logger.warning(
            "curves: skipped %d malformed line(s) of %s (first: line %d, %s)", len(bad), path, number, reason
        )
    return records


def read_history(output_dir: str | Path) -> History:
    """Read ``train_metrics.jsonl`` and ``metrics.jsonl`` of ``output_dir`` (either may be missing).

    Of several lines for the same epoch (same epoch and dataset in ``metrics.jsonl``), as a resumed run
    writes, the later line wins.  Malformed lines are skipped with a warning; this never raises.
    """
    folder = Path(output_dir)
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in _read_records(folder / TRAIN_METRICS_FILE):
        by_epoch[record["epoch"]] = record
    evaluations: dict[str, dict[int, dict[str, Any]]] = {}
    for record in _read_records(folder / METRICS_FILE):
        name = record.get("dataset")
        name = str(name) if name not in (None, "") else "(unnamed dataset)"
        evaluations.setdefault(name, {})[record["epoch"]] = record
    return History(
        train=[by_epoch[e] for e in sorted(by_epoch)],
        evaluations={name: [recs[e] for e in sorted(recs)] for name, recs in evaluations.items()},
    )


# ---------------------------------------------------------------------------------------------------------
# Series
# ---------------------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A JSON number as a float (non-finite -> NaN, drawn as a gap), None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # a JSON integer beyond float range
        return math.nan
    return value if math.isfinite(value) else math.nan


def _series(records: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and ``scale * record[key]`` over the records that hold a number under ``key``."""
    epochs, values = [], []
    for record in records:
        value = _number(record.get(key))
        if value is not None:
            epochs.append(record["epoch"])
            values.append(value * scale)
    return np.asarray(epochs, dtype=np.int64), np.asarray(values, dtype=np.float64)


def _numeric_keys(records: Iterable[dict[str, Any]], exclude: Iterable[str] = ()) -> list[str]:
    """Keys holding a number in at least one record, in order of first appearance."""
    skip = set(exclude)
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in skip and key not in seen and _number(value) is not None:
                seen[key] = None
    return list(seen)


def _lr_series(records: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parameter group -> (epochs, learning rates); a bare number is the group ``lr``.  Rates that a log
    axis cannot show (zero, negative, not finite) are dropped."""
    points: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        lr = record.get("lr")
        groups = lr.items() if isinstance(lr, dict) else [("lr", lr)]
        for name, value in groups:
            value = _number(value)
            if value is not None and math.isfinite(value) and value > 0:
                epochs, values = points.setdefault(str(name), ([], []))
                epochs.append(record["epoch"])
                values.append(value)
    return {name: (np.asarray(e, dtype=np.int64), np.asarray(v, dtype=np.float64)) for name, (e, v) in points.items()}


def _metric_columns(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, label) of the metrics to draw for one dataset, main metric first: the re-ID set, then every
    R@k by increasing k, MAP@R and NMI, each only when some record holds it."""
    present = set(_numeric_keys(records))
    recalls = sorted((int(m.group(1)), key) for key in present if (m := _RECALL_KEY.match(key)))
    candidates = [*_REID_METRICS, *((key, key) for _, key in recalls), *_RETRIEVAL_TAIL]
    return [(key, label) for key, label in candidates if key in present]


def _protocol(records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """The dataset's protocol for the panel title: the records' own word, else guessed from the metrics."""
    for record in reversed(records):
        if isinstance(record.get("protocol"), str):
            return _PROTOCOL_NAMES.get(record["protocol"], record["protocol"])
    keys = {key for key, _ in columns}
    return "re-ID" if "mAP" in keys else "retrieval"


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------
def _new_figure(panels: int) -> Figure:
    """A figure of ``panels`` stacked panels, Agg canvas attached (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGURE_WIDTH, PANEL_HEIGHT * panels + 0.5), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _arrange(fig: Figure, axes: Sequence[Axes], *, suptitle: bool = True) -> None:
    """Place the panels: fixed margins, and on the right the width of the widest legend.

    Matplotlib's constrained layout would find the margins itself but measures every tick label of every
    panel on each save, which doubles the drawing time; only the legends vary in width here (their labels
    are the run's own loss and group names), so only they are measured.
    """
    renderer = fig.canvas.get_renderer()
    legend_width = max(
        (ax.get_legend().get_window_extent(renderer).width / fig.dpi for ax in axes if ax.get_legend() is not None),
        default=0.0,
    )
    width, height = fig.get_size_inches()
    right = min(legend_width + _LEGEND_PAD, 0.45 * width)  # a very long label is cut, the axes keep room
    panels = len(axes)
    top = _TOP_MARGIN if suptitle else _TOP_MARGIN - 0.35  # a figure title takes one line of text
    panel_height = (height - top - _BOTTOM_MARGIN - _PANEL_GAP * (panels - 1)) / panels
    fig.subplots_adjust(
        left=_LEFT_MARGIN / width,
        right=1.0 - right / width,
        top=1.0 - top / height,
        bottom=_BOTTOM_MARGIN / height,
        hspace=_PANEL_GAP / panel_height,
    )


def _style(index: int) -> dict[str, Any]:
    """Colour and dash pattern of the index-th line: ten colours, then the next dash pattern."""
    return {"color": f"C{index % 10}", "linestyle": _LINE_STYLES[(index // 10) % len(_LINE_STYLES)]}


def _plot(ax: Axes, epochs: np.ndarray, values: np.ndarray, label: str, **style: Any) -> None:
    """One series; markers when it is short enough for them to help."""
    marker = "o" if len(epochs) <= _MARKER_LIMIT else None
    ax.plot(epochs, values, label=label, marker=marker, markersize=3.5, linewidth=style.pop("linewidth", 1.5), **style)


def _finish(ax: Axes, title: str, ylabel: str, *, legend: bool = True) -> None:
    """Title, labels, integer epoch ticks, grid and a legend beside the axes."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    # Stacked panels share the epoch axis: only the bottom one shows its ticks, so only it gets the label.
    if ax.get_subplotspec() is None or ax.get_subplotspec().is_last_row():
        ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Below two epochs of range the integer locator gives up and ticks fractions of an epoch.
    xs = [np.asarray(line.get_xdata(), dtype=np.float64) for line in ax.get_lines()]
    xs = np.concatenate([np.empty(0), *xs])
    if xs.size and xs.max() - xs.min() < 2:
        ax.set_xlim(xs.min() - 1, xs.max() + 1)
    ax.grid(True, which="major", alpha=0.4)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _maybe_log(ax: Axes, series: Iterable[np.ndarray]) -> bool:
    """Switch ``ax`` to a log y axis when all values are positive and span more than ``_LOG_RATIO``."""
    values = np.concatenate([np.empty(0), *(s[np.isfinite(s)] for s in series)])
    if values.size and values.min() > 0 and values.max() / values.min() > _LOG_RATIO:
        ax.set_yscale("log")
        return True
    return False


def _loss_figure(train: Sequence[dict[str, Any]]) -> Figure | None:
    """Panels: total loss and loss terms; training accuracy (%); other statistics.  None if all empty."""
    keys = _numeric_keys(train, exclude=_TRAIN_BOOKKEEPING)
    losses = (["loss"] if "loss" in keys else []) + [k for k in keys if k.endswith("_loss")]
    stats = [k for k in keys if k != "loss" and k != "acc" and not k.endswith("_loss")]
    panels = [name for name, present in (("loss", losses), ("acc", "acc" in keys), ("stats", stats)) if present]
    if not panels:
        return None
    fig = _new_figure(len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle("Training (running averages per epoch)")
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            drawn = []
            for i, key in enumerate(losses):
                epochs, values = _series(train, key)
                # The total is what the optimiser sees: draw it first, thick and black.
                term_index = i - 1 if "loss" in losses else i
                style = {"color": "black", "linewidth": 2.2} if key == "loss" else _style(term_index)
                _plot(ax, epochs, values, "total loss" if key == "loss" else key, **style)
                drawn.append(values)
            log = _maybe_log(ax, drawn)
            _finish(ax, "Losses", "loss (log scale)" if log else "loss")
        elif panel == "acc":
            epochs, values = _series(train, "acc", 100.0)
            _plot(ax, epochs, values, "training accuracy", color="C2")
            _finish(ax, "Training accuracy", "accuracy (%)", legend=False)
        else:
            drawn = []
            for i, key in enumerate(stats):
                epochs, values = _series(train, key)
                _plot(ax, epochs, values, key, **_style(i))
                drawn.append(values)
            log = _maybe_log(ax, drawn)
            _finish(ax, "Loss statistics", "value (log scale)" if log else "value")
    _arrange(fig, axes)
    return fig


def _lr_figure(train: Sequence[dict[str, Any]]) -> Figure | None:
    """The learning rate of every parameter group on a log axis.  None without any rate."""
    groups = _lr_series(train)
    if not groups:
        return None
    fig = _new_figure(1)
    ax = fig.subplots()
    for i, (name, (epochs, values)) in enumerate(groups.items()):
        # Groups often share a rate (backbone and bias): a different dash for each keeps both visible.
        _plot(
            ax, epochs, values, name, linewidth=1.8, color=f"C{i % 10}", linestyle=_LINE_STYLES[i % len(_LINE_STYLES)]
        )
    ax.set_yscale("log")
    _finish(ax, "Learning rate per parameter group", "learning rate (log scale)")
    _arrange(fig, [ax], suptitle=False)
    return fig


def _annotate_best(ax: Axes, epochs: np.ndarray, values: np.ndarray, label: str) -> None:
    """Star on the first epoch that reaches the series' maximum, with its value and epoch written beside."""
    finite = np.isfinite(values)
    if not finite.any():
        return
    best = int(np.argmax(np.where(finite, values, -np.inf)))  # argmax keeps the first of ties
    x, y = int(epochs[best]), float(values[best])
    ax.plot(
        [x],
        [y],
        marker="*",
        markersize=14,
        color="gold",
        markeredgecolor="black",
        linestyle="none",
        zorder=5,
        gid=f"best:{label}",
        label="_best",
    )
    # Keep the text inside the axes: to the left of a point in the right half, to the right otherwise.
    right_half = len(epochs) > 1 and x > (epochs.min() + epochs.max()) / 2
    ax.annotate(
        f"best {label} {y:.1f}% (epoch {x})",
        xy=(x, y),
        xytext=(-12 if right_half else 12, -22),
        textcoords="offset points",
        ha="right" if right_half else "left",
        va="top",
        fontsize="small",
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"},
        arrowprops={"arrowstyle": "-", "color": "0.4"},
        zorder=6,
    )


def _metrics_figure(evaluations: dict[str, list[dict[str, Any]]]) -> Figure | None:
    """One panel per dataset with its main metrics in %, the best epoch of the first one marked.  None when
    no dataset has any of those metrics."""
    panels = []
    for name, records in evaluations.items():
        columns = _metric_columns(records)
        if columns:
            panels.append((name, records, columns))
    if not panels:
        return None
    fig = _new_figure(len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle("Evaluation")
    for ax, (name, records, columns) in zip(axes, panels):
        for i, (key, label) in enumerate(columns):
            epochs, values = _series(records, key, 100.0)
            if i == 0:
                # The main metric picks the best model: drawn thicker and above the others.
                _plot(ax, epochs, values, label, linewidth=2.4, zorder=3, **_style(i))
                _annotate_best(ax, epochs, values, label)
            else:
                _plot(ax, epochs, values, label, **_style(i))
        # Leave headroom above the best point so that the star is not clipped by the frame.
        ax.margins(y=0.12)
        _finish(ax, f"{name} ({_protocol(records, columns)})", "score (%)")
    _arrange(fig, axes)
    return fig


def build_figures(history: History) -> dict[str, Figure]:
    """The figures of ``history`` by file name (``curves_loss.png``, ``curves_lr.png``,
    ``curves_metrics.png``), without saving them; a picture with nothing to draw is absent."""
    builders = (
        (LOSS_PICTURE, lambda: _loss_figure(history.train)),
        (LR_PICTURE, lambda: _lr_figure(history.train)),
        (METRICS_PICTURE, lambda: _metrics_figure(history.evaluations)),
    )
    figures = {}
    for name, build in builders:
        fig = build()
        if fig is not None:
            figures[name] = fig
    return figures


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def _save_atomic(fig: Figure, path: Path) -> None:
    """The PNG of `fig` at ``path``, written atomically: a reader sees the old or the new picture, never half
    of one."""
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))


def draw_curves(output_dir: str | Path) -> list[Path]:
    """Read the run's JSON-lines files in ``output_dir`` and (over)write its curve pictures there.

    Returns the paths written, a subset of ``curves_loss.png``, ``curves_lr.png`` and
    ``curves_metrics.png``: pictures with nothing to draw are skipped.  Any failure (missing matplotlib,
    unreadable folder, drawing error) is logged as a warning and leaves that picture out; this never raises.
    """
    folder = Path(output_dir)
    try:
        history = read_history(folder)
        if history.empty:
            return []
        figures = build_figures(history)
    except ImportError as err:
        logger.warning("curves: no pictures, matplotlib is not available (%s)", err)
        return []
    except Exception as err:  # pictures must never stop a training run
        logger.warning("curves: could not build the pictures of %s: %s", folder, err, exc_info=True)
        return []
    written = []
    for name, fig in figures.items():
        path = folder / name
        try:
            _save_atomic(fig, path)
        except Exception as err:  # noqa: BLE001 - a picture that cannot be written must not stop training
            logger.warning("curves: could not write %s: %s", path, err)
            continue
        written.append(path)
    return written
