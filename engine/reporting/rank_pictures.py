"""Rank pictures for ``TEST.VISRANK = k``: per query, its best valid gallery items and its last true match.

Two steps, kept apart so that the ranking can be tested without pictures:

* :func:`ranked_lists` ranks the gallery for every query from chunks of the distance matrix (memory stays
  ``O(chunk x G)``) and returns one small :class:`RankedQuery` per query;
* :func:`write_rank_pictures` draws one JPEG per query with PIL and writes an ``index.csv`` beside them.

Protocol (valid items and order as in :mod:`engine.evaluation.reid_metrics` and
:mod:`engine.evaluation.retrieval_metrics`)
------------------------------------------------------------------------------------------------
* **Valid items.**  Re-ID (``reid=True``, Market-1501's protocol): every gallery item except the *junk*,
  i.e. the items with the same label **and** the same camera as the query; camera id ``-1`` means "no camera
  information" and never makes an item junk.  Retrieval (``reid=False``): every gallery item; cameras are
  ignored.  With ``query_is_gallery=True`` the query's own gallery index is also removed (by index, never by
  distance, so exact duplicates of the query stay).
* **Ranking.**  The valid items by the order rule of :mod:`engine.evaluation.ranking`, shared by every
  ranker of the engine: ascending distance, exact ties broken by gallery index (a stable sort), NaN
  distances last whatever their sign bit.  Ranks are 1-based and count valid items only.
* **True match.**  A valid item with the query's label.  With ``r_1 < ... < r_K`` the ranks of the ``K``
  true matches, ``AP = (1/K) sum_j j / r_j`` (the mean over the true matches of the precision at their rank,
  computed over the *whole* valid ranking, not only the part drawn; the standard AP of re-ID, not the MAP@R
  of retrieval), and ``AP = 0`` when ``K = 0``.

Picture layout
--------------
A row of ``k + 1`` equal tiles (see :func:`tile_size`): the query (grey background, dark border; caption:
pid, AP in %, norm if given), then the top ``k - 1`` valid gallery items (border green for a true match,
red otherwise; caption: rank, distance, pid, norm; test.py shows the readable distance, or with
TEST.RE_RANKING the re-ranked distance its order comes from), then the *last slot*: the lowest-ranked true match,
with a blue border when it is not among the ``k - 1`` items already shown and green when it is (the row
then already holds every true match).  A query without any true match leaves the last slot empty (a blank
tile captioned "no true match"): showing the k-th valid item there would pass a non-match off as the last
match.  Slots beyond the number of valid items are blank too.  Every tile shows the file name (basename,
shortened in the middle if it does not fit) under the image, and ``index.csv`` lists the full paths.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from engine.evaluation.ranking import DistanceSource, IdArray, as_distance_blocks, as_id_tensor, row_order

__all__ = [
    "LAST_MATCH_COLOUR",
    "MATCH_COLOUR",
    "NON_MATCH_COLOUR",
    "TILE_BORDER",
    "TILE_PAD",
    "RankedQuery",
    "ranked_lists",
    "tile_size",
    "write_rank_pictures",
]

logger = logging.getLogger(__name__)

FloatArray = torch.Tensor | np.ndarray | Sequence[float]
#: ``display(query_index, gallery_index) -> (n,)`` distances of ``n`` (query, gallery) pairs, for showing.
PairDistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PathLike = str | Path

# Tile geometry (pixels): margin around the framed image, frame width.  The frame is wide enough for its
# colour to survive JPEG compression in the middle of the stroke.
TILE_PAD = 4
TILE_BORDER = 5
_CAPTION_LINES = 4  # three lines of text, then the file name
_LINE_GAP = 2
# Captions must hold a Market-1501 file name in full; longer names are shortened in the middle.
_CAPTION_TEMPLATE = "0000_c0s0_000000_00.jpg"

MATCH_COLOUR = (0, 190, 0)
NON_MATCH_COLOUR = (225, 0, 0)
LAST_MATCH_COLOUR = (0, 80, 255)
_QUERY_COLOUR = (40, 40, 40)
_EMPTY_FRAME = (200, 200, 200)
_TILE_BG = (255, 255, 255)
_QUERY_BG = (228, 228, 228)
_IMAGE_BG = (245, 245, 245)
_UNREADABLE_BG = (150, 150, 150)
_TEXT = (0, 0, 0)


# ---------------------------------------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class RankedQuery:
    """The ranking of one query, reduced to what a picture needs.

    Attributes:
        query_index: index of the query (0-based, into the query arrays).
        top_k: the ``k`` of ``TEST.VISRANK``; the picture has ``k + 1`` tiles.
        gallery_indices: int64 ``(n,)``, the first ``n = min(k - 1, num_valid)`` valid items, best first
            (their ranks are ``1..n``).
        distances: float64 ``(n,)``, their distances.
        is_match: bool ``(n,)``, whether each is a true match.
        num_valid: number of valid gallery items.
        num_matches: number of true matches ``K``.
        ap: average precision over the whole valid ranking (0.0 when ``K = 0``).
        last_match_rank: 1-based rank of the lowest-ranked true match (``None`` when ``K = 0``).
        last_match_index: its gallery index (``None`` when ``K = 0``).
        last_match_distance: its distance (``None`` when ``K = 0``).
    """

    query_index: int
    top_k: int
    gallery_indices: np.ndarray
    distances: np.ndarray
    is_match: np.ndarray
    num_valid: int
    num_matches: int
    ap: float
    last_match_rank: int | None
    last_match_index: int | None
    last_match_distance: float | None

    @property
    def has_match(self) -> bool:
        return self.num_matches > 0


def ranked_lists(
    dist_fn: DistanceSource,
    num_queries: int,
    query_labels: IdArray,
    query_camids: IdArray | None,
    gallery_labels: IdArray,
    gallery_camids: IdArray | None,
    top_k: int,
    reid: bool = True,
    chunk: int = 256,
    query_is_gallery: bool = False,
    *,
    numpy_sort_on_cpu: bool = True,
    display: PairDistanceFn | None = None,
) -> list[RankedQuery]:
    """Rank the gallery for every query (see the module docstring for the protocol).

    Args:
        dist_fn: ``dist_fn(start, stop)`` returns the distances of queries ``start..stop-1`` to the whole
            gallery, a ``(stop - start, G)`` tensor (smaller = more similar; fp32 or fp64, any device); or
            the whole ``(Q, G)`` tensor, or :class:`engine.evaluation.ranking.DistanceBlocks` (e.g.
            ``FeatureDistances`` of query and gallery features).
        num_queries: ``Q``.
        query_labels, gallery_labels: identity / class labels, ``Q`` and ``G`` of them.
        query_camids, gallery_camids: camera ids (``-1`` = unknown); required with ``reid=True``, ignored
            (may be ``None``) otherwise.
        top_k: ``k >= 1``: keep the ``k - 1`` best valid items of each query (plus its last true match).
        reid: re-ID protocol (same label and same camera = junk) or retrieval (everything is valid).
        chunk: number of queries whose distance rows are held at once.
        query_is_gallery: the query set is the gallery (``G == Q``); query ``i`` is not ranked against
            gallery item ``i``.
        numpy_sort_on_cpu: sort CPU fp32 rows with numpy's integer sort (faster); ``False`` takes the torch
            sort that CUDA tensors take.  The order is the same (see
            :func:`engine.evaluation.ranking.row_order`).
        display: the distance shown for a ranked item when it is not the one ranked by:
            ``display(query_index, gallery_index)`` gets two int64 ``(n,)`` tensors of pairs (indices into
            the queries and the gallery) and returns their ``(n,)`` distances.  For blocks in a ranking form
            that is not readable (e.g. ``||g||^2 - 2 q.g``, which drops ``||q||^2``): ``dist_fn`` gives the
            order, ``display`` the ``distances`` / ``last_match_distance`` of the items kept.  ``None``: the
            ranked distances themselves.

    Returns:
        One :class:`RankedQuery` per query, in query order.

    Raises:
        ValueError: on bad ``top_k``/``chunk``, inconsistent lengths, missing camera ids in re-ID mode,
            or a ``dist_fn`` result of the wrong shape.
    """
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if int(num_queries) != num_queries or num_queries < 0:
        raise ValueError(f"num_queries must be an integer >= 0, got {num_queries!r}")
    top_k, chunk, num_queries = int(top_k), int(chunk), int(num_queries)
    qlab = as_id_tensor(query_labels, "query_labels", num_queries, "cpu")
    glab = as_id_tensor(gallery_labels, "gallery_labels", None, "cpu")
    num_g = glab.numel()
    if query_is_gallery and num_g != num_queries:
        raise ValueError(f"query_is_gallery needs as many gallery items as queries, got G={num_g}, Q={num_queries}")
    if reid:
        if query_camids is None or gallery_camids is None:
            raise ValueError("the re-ID protocol (reid=True) needs query_camids and gallery_camids")
        qcam = as_id_tensor(query_camids, "query_camids", num_queries, "cpu")
        gcam = as_id_tensor(gallery_camids, "gallery_camids", num_g, "cpu")

    records: list[RankedQuery] = []
    keep = top_k - 1
    # fp32 or fp64 blocks on the device dist_fn returns them on (fp16/bf16/integer distances are exact in
    # fp32, so ranking them as fp32 changes nothing).
    blocks = as_distance_blocks(dist_fn, num_queries, num_g, name="dist_fn", keep_float64=True)
    for start, stop, dist in blocks.chunks(chunk):
        c = stop - start
        dev = dist.device
        ql = qlab[start:stop].to(dev)
        gl = glab.to(dev)

        same = ql.unsqueeze(1) == gl.unsqueeze(0)
        if reid:
            qc = qcam[start:stop].to(dev).unsqueeze(1)
            valid = ~(same & (qc == gcam.to(dev).unsqueeze(0)) & (qc != -1))
        else:
            valid = torch.ones_like(same)
        if query_is_gallery:
            rows = torch.arange(c, device=dev)
            valid[rows, rows + start] = False
        match = same & valid
        del same

        # One full sort per row: AP needs the exact rank of every true match.  Ranks among valid items
        # are then a cumulative count, so junk never needs to be moved out of the sorted rows.
        order = row_order(dist, numpy_sort_on_cpu)
        v_sorted = valid.gather(1, order)
        del valid
        vrank = torch.cumsum(v_sorted, dim=1, dtype=torch.int32)  # rank of each valid item where it sits
        m_sorted = match.gather(1, order)
        mcount = torch.cumsum(m_sorted, dim=1, dtype=torch.int32)  # j of each true match where it sits
        num_valid = vrank[:, -1] if num_g else torch.zeros(c, dtype=torch.int32, device=dev)
        num_matches = mcount[:, -1] if num_g else torch.zeros(c, dtype=torch.int32, device=dev)

        m_rows, m_pos = m_sorted.nonzero(as_tuple=True)  # row-major: each row's matches best first
        m_rank = vrank[m_rows, m_pos].cpu().numpy().astype(np.float64)
        m_j = mcount[m_rows, m_pos].cpu().numpy().astype(np.float64)
        m_rows_np = m_rows.cpu().numpy()
        m_idx = order[m_rows, m_pos]
        m_idx_np = m_idx.cpu().numpy()
        nm = num_matches.cpu().numpy().astype(np.int64)
        ap = np.bincount(m_rows_np, weights=m_j / np.maximum(m_rank, 1.0), minlength=c)
        ap = np.where(nm > 0, ap / np.maximum(nm, 1), 0.0)
        last = np.cumsum(nm) - 1  # flat position of each row's last match (valid where nm > 0)
        # Distances only of what a record keeps: each row's last match, then its top items.
        last_flat = torch.as_tensor(last[nm > 0], device=dev)
        m_dist = np.zeros(len(m_rows_np), dtype=np.float64)
        m_dist[last[nm > 0]] = _shown(dist, display, start, m_rows[last_flat], m_idx[last_flat])

        t_rows, t_pos = (v_sorted & (vrank <= keep)).nonzero(as_tuple=True)
        t_idx = order[t_rows, t_pos]
        t_dist = _shown(dist, display, start, t_rows, t_idx)
        t_match = match[t_rows, t_idx].cpu().numpy()
        t_idx_np = t_idx.cpu().numpy().astype(np.int64)
        t_count = torch.bincount(t_rows, minlength=c).cpu().numpy()
        t_first = np.cumsum(t_count) - t_count
        nv = num_valid.cpu().numpy().astype(np.int64)
        del dist, order, v_sorted, vrank, m_sorted, mcount, match

        for r in range(c):
            sl = slice(int(t_first[r]), int(t_first[r] + t_count[r]))
            has = nm[r] > 0
            records.append(
                RankedQuery(
                    query_index=start + r,
                    top_k=top_k,
                    gallery_indices=t_idx_np[sl].copy(),
                    distances=t_dist[sl].copy(),
                    is_match=t_match[sl].copy(),
                    num_valid=int(nv[r]),
                    num_matches=int(nm[r]),
                    ap=float(ap[r]),
                    last_match_rank=int(m_rank[last[r]]) if has else None,
                    last_match_index=int(m_idx_np[last[r]]) if has else None,
                    last_match_distance=float(m_dist[last[r]]) if has else None,
                )
            )
    return records


def _shown(
    dist: torch.Tensor, display: PairDistanceFn | None, start: int, rows: torch.Tensor, cols: torch.Tensor
) -> np.ndarray:
    """float64 distances of the items (rows, cols) of a chunk starting at query ``start``: the ranked block's
    values, or ``display``'s for the pairs (query ``start + row``, gallery ``col``)."""
    if display is None:
        # (widened by torch: numpy warns on signalling NaNs, which a distance function may return)
        return dist[rows, cols].double().cpu().numpy()
    got = display(rows + start, cols)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (rows.numel(),):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise ValueError(f"display returned {shape}, expected ({rows.numel()},)")
    return got.detach().double().cpu().numpy()


# ---------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


@functools.lru_cache(maxsize=8192)  # captions and file names repeat across pictures
def _text_width(text: str) -> float:
    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font())


@functools.lru_cache(maxsize=1)
def _line_height() -> int:
    box = _font().getbbox("Agjy|_0")
    return int(box[3]) + _LINE_GAP


def tile_size(size: tuple[int, int] = (128, 64)) -> tuple[int, int]:
    """``(width, height)`` in pixels of one tile for images of ``size = (height, width)``.

    A picture of ``k = TEST.VISRANK`` is ``((k + 1) * width, height)``: the query, ``k - 1`` items, the
    last slot.  The tile is at least wide enough for a Market-1501 file name in the caption.
    """
    h, w = _check_size(size)
    frame_w = w + 2 * (TILE_PAD + TILE_BORDER)
    caption_w = math.ceil(_text_width(_CAPTION_TEMPLATE)) + 2 * TILE_PAD + 2
    height = h + 2 * (TILE_PAD + TILE_BORDER) + _CAPTION_LINES * _line_height() + TILE_PAD
    return max(frame_w, caption_w), height


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be (height, width) in positive pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _fit(text: str, width: float, middle: bool) -> str:
    """``text`` shortened with '...' (in the middle for file names, at the end otherwise) to fit ``width``."""
    if _text_width(text) <= width:
        return text
    if middle:
        # Keep the end of the name (frame number, extension) and as much of its start as fits.
        head, tail = len(text) // 2, len(text) - len(text) // 2
        while head + tail > 1:
            if head >= tail:
                head -= 1
            else:
                tail -= 1
            candidate = text[:head] + "..." + text[len(text) - tail :]
            if _text_width(candidate) <= width:
                return candidate
        return "..."
    for n in range(len(text) - 1, 0, -1):
        if _text_width(text[:n] + "...") <= width:
            return text[:n] + "..."
    return "..."


def _load_image(path: PathLike, size_wh: tuple[int, int], warned: set[str]) -> Image.Image | None:
    """The image letterboxed to ``size_wh``, or ``None`` if it cannot be read (warned once per path)."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if str(path) not in warned:
            warned.add(str(path))
            logger.warning("visrank: cannot read image %s (%s); drawing a grey tile", path, err)
        return None
    # Aspect ratio kept: retrieval images are often landscape, re-ID crops portrait.
    return ImageOps.pad(rgb, size_wh, color=_IMAGE_BG)


def _centred_text(draw: ImageDraw.ImageDraw, centre_x: float, top: float, text: str) -> None:
    # Positioned by hand rather than with `anchor=`: the bitmap fallback font does not support anchors.
    draw.text((round(centre_x - _text_width(text) / 2.0), round(top)), text, fill=_TEXT, font=_font())


def _draw_tile(
    canvas: Image.Image,
    x0: int,
    tile_wh: tuple[int, int],
    size_wh: tuple[int, int],
    path: PathLike | None,
    frame: tuple[int, int, int],
    lines: Sequence[str],
    background: tuple[int, int, int],
    warned: set[str],
    empty_text: str = "",
) -> None:
    """One tile at ``x0``: framed image (or grey 'unreadable' / blank), caption lines, file name last."""
    draw = ImageDraw.Draw(canvas)
    tw, th = tile_wh
    w, h = size_wh
    draw.rectangle((x0, 0, x0 + tw - 1, th - 1), fill=background)
    fx = x0 + (tw - (w + 2 * (TILE_PAD + TILE_BORDER))) // 2 + TILE_PAD  # frame's outer left edge
    fy = TILE_PAD
    draw.rectangle((fx, fy, fx + w + 2 * TILE_BORDER - 1, fy + h + 2 * TILE_BORDER - 1), fill=frame)
    ix, iy = fx + TILE_BORDER, fy + TILE_BORDER
    centre_x = x0 + tw / 2.0
    if path is None:
        draw.rectangle((ix, iy, ix + w - 1, iy + h - 1), fill=_TILE_BG)
        if empty_text:
            _centred_text(draw, centre_x, iy + h / 2.0 - _line_height() / 2.0, _fit(empty_text, w - 4, False))
    else:
        img = _load_image(path, size_wh, warned)
        if img is None:
            draw.rectangle((ix, iy, ix + w - 1, iy + h - 1), fill=_UNREADABLE_BG)
            _centred_text(draw, centre_x, iy + h / 2.0 - _line_height() / 2.0, _fit("unreadable", w - 4, False))
        else:
            canvas.paste(img, (ix, iy))
    room = tw - 2 * TILE_PAD
    y = fy + h + 2 * TILE_BORDER + 1
    name = Path(path).name if path is not None else ""
    all_lines = list(lines)[: _CAPTION_LINES - 1] + [""] * max(0, _CAPTION_LINES - 1 - len(lines)) + [name]
    for i, text in enumerate(all_lines):
        if text:
            text = _fit(text, room, middle=(i == _CAPTION_LINES - 1))
            _centred_text(draw, centre_x, y, text)
        y += _line_height()


def _as_floats(values: FloatArray | None, name: str, n: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    arr = arr.reshape(-1)
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries, expected {n}")
    return arr


def _norm_text(norms: np.ndarray | None, i: int) -> str:
    return "" if norms is None else f"norm {norms[i]:.4g}"


def write_rank_pictures(
    out_dir: PathLike,
    dataset_name: str,
    query_paths: Sequence[PathLike],
    gallery_paths: Sequence[PathLike],
    ranked: Sequence[RankedQuery],
    query_labels: IdArray,
    gallery_labels: IdArray,
    query_norms: FloatArray | None = None,
    gallery_norms: FloatArray | None = None,
    size: tuple[int, int] = (128, 64),
) -> list[Path]:
    """Draw one rank picture per record of ``ranked`` (layout in the module docstring).

    Files: ``out_dir/visrank/<dataset_name>/<query index:05d>_<query file stem>.jpg`` and, in the same
    folder, ``index.csv`` with a header and one row per picture: query path, picture file name, AP (a
    fraction, 6 decimals), then the gallery paths of the row in order (the ``k - 1`` items, then the last
    slot; empty cells for blank slots).

    Args:
        out_dir: ``OUTPUT_DIR``.
        dataset_name: the dataset's name (a folder under ``visrank``).
        query_paths, gallery_paths: image paths, indexed as in :func:`ranked_lists`.
        ranked: records from :func:`ranked_lists` (all with the same ``top_k``).
        query_labels, gallery_labels: labels shown in the captions.
        query_norms, gallery_norms: optional feature norms shown in the captions.
        size: ``(height, width)`` of each image (as ``INPUT.SIZE_TEST``).

    Returns:
        The paths of the JPEGs written, in the order of ``ranked``.
    """
    h, w = _check_size(size)
    qlab = as_id_tensor(query_labels, "query_labels", len(query_paths), "cpu").numpy()
    glab = as_id_tensor(gallery_labels, "gallery_labels", len(gallery_paths), "cpu").numpy()
    qnorm = _as_floats(query_norms, "query_norms", len(query_paths))
    gnorm = _as_floats(gallery_norms, "gallery_norms", len(gallery_paths))
    folder = Path(out_dir) / "visrank" / str(dataset_name)
    folder.mkdir(parents=True, exist_ok=True)
    tile_wh = tile_size((h, w))
    size_wh = (w, h)
    warned: set[str] = set()
    ks = {rec.top_k for rec in ranked}
    if len(ks) > 1:
        raise ValueError(f"all records must share one top_k (one index.csv layout), got {sorted(ks)}")
    max_k = ks.pop() if ks else 1
    written: list[Path] = []
    rows: list[list[str]] = []

    for rec in ranked:
        q = rec.query_index
        k = rec.top_k
        canvas = Image.new("RGB", ((k + 1) * tile_wh[0], tile_wh[1]), _TILE_BG)
        ap_text = f"AP {100.0 * rec.ap:.1f}%" + ("" if rec.has_match else " (no match)")
        _draw_tile(
            canvas,
            0,
            tile_wh,
            size_wh,
            query_paths[q],
            _QUERY_COLOUR,
            [f"query pid {qlab[q]}", ap_text, _norm_text(qnorm, q)],
            _QUERY_BG,
            warned,
        )
        row_paths: list[str] = []
        for slot in range(k - 1):
            x0 = (slot + 1) * tile_wh[0]
            if slot < len(rec.gallery_indices):
                g = int(rec.gallery_indices[slot])
                colour = MATCH_COLOUR if rec.is_match[slot] else NON_MATCH_COLOUR
                lines = [f"#{slot + 1} d={rec.distances[slot]:.4g}", f"pid {glab[g]}", _norm_text(gnorm, g)]
                _draw_tile(canvas, x0, tile_wh, size_wh, gallery_paths[g], colour, lines, _TILE_BG, warned)
                row_paths.append(str(gallery_paths[g]))
            else:
                _draw_tile(canvas, x0, tile_wh, size_wh, None, _EMPTY_FRAME, ["no more valid items"], _TILE_BG, warned)
                row_paths.append("")
        x0 = k * tile_wh[0]
        if rec.has_match:
            g = int(rec.last_match_index)
            shown = rec.last_match_rank <= k - 1
            colour = MATCH_COLOUR if shown else LAST_MATCH_COLOUR
            lines = [f"last match #{rec.last_match_rank}", f"d={rec.last_match_distance:.4g}", _norm_text(gnorm, g)]
            _draw_tile(canvas, x0, tile_wh, size_wh, gallery_paths[g], colour, lines, _TILE_BG, warned)
            row_paths.append(str(gallery_paths[g]))
        else:
            _draw_tile(
                canvas,
                x0,
                tile_wh,
                size_wh,
                None,
                _EMPTY_FRAME,
                ["no true match", "in the gallery"],
                _TILE_BG,
                warned,
                empty_text="(none)",
            )
            row_paths.append("")

        target = folder / f"{q:05d}_{Path(query_paths[q]).stem}.jpg"
        # 4:4:4 chroma keeps the thin coloured frames and small text sharp.
        canvas.save(target, format="JPEG", quality=92, subsampling=0)
        written.append(target)
        rows.append([str(query_paths[q]), target.name, f"{rec.ap:.6f}"] + row_paths)

    header = ["query", "picture", "ap"] + [f"rank_{i}" for i in range(1, max_k)] + ["last_match"]
    with open(folder / "index.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return written
