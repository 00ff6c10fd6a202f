"""The one result type every analyzer returns: a frozen, columnar set of boxes on one upright image.

Boxes are pixel ``x1, y1, x2, y2`` floats in the upright image (after EXIF orientation), origin top-left,
with ``x1 <= x2`` and ``y1 <= y2`` and every coordinate inside ``[0, width] x [0, height]``.
Built by named constructors (``from_barcodes``, ``from_text_lines``, ``from_grid_boxes`` for VL2's 0-999 grid),
validated once in ``__post_init__``; ``to_rows`` is the single place that turns it into plain rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# The kinds of observation an analyzer can emit: one name each, from this type to its SQL table (same name) to the
# webhook payload's ``results`` key and the docs.
KINDS = ("objects", "text_lines", "barcodes")

# VL2 writes box corners as integers on a 0..999 grid of the original image; 999 is the right/bottom edge.
GRID_MAX = 999


class DetectionsError(ValueError):
    """Raised when boxes, labels or per-row data do not agree."""


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes of one kind on one image.

    ``xyxy`` is ``(n, 4)`` float64; ``labels`` has n strings; ``scores`` is ``(n,)`` float64 or None;
    ``data`` maps a column name to a tuple of n values (``text``, ``value``, ``phrase``...).
    """

    kind: str
    image_size: tuple[int, int]  # (width, height) of the upright image
    xyxy: np.ndarray
    labels: tuple[str, ...]
    scores: np.ndarray | None = None
    data: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DetectionsError(f"kind must be one of {KINDS}, got {self.kind!r}")
        w, h = self.image_size
        if w <= 0 or h <= 0:
            raise DetectionsError(f"image_size must be positive, got {self.image_size}")
        xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)  # [n, 4]
        n = len(xyxy)
        if not np.all(np.isfinite(xyxy)):
            raise DetectionsError("boxes contain NaN or infinity")
        if np.any(xyxy[:, 0] > xyxy[:, 2]) or np.any(xyxy[:, 1] > xyxy[:, 3]):
            raise DetectionsError("boxes must have x1 <= x2 and y1 <= y2")
        eps = 1e-6
        if np.any(xyxy < -eps) or np.any(xyxy[:, [0, 2]] > w + eps) or np.any(xyxy[:, [1, 3]] > h + eps):
            raise DetectionsError(f"boxes must lie inside the {w}x{h} image")
        xyxy.setflags(write=False)
        object.__setattr__(self, "xyxy", xyxy)
        labels = tuple(str(x) for x in self.labels)
        if len(labels) != n:
            raise DetectionsError(f"{n} boxes but {len(labels)} labels")
        object.__setattr__(self, "labels", labels)
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(scores) != n:
                raise DetectionsError(f"{n} boxes but {len(scores)} scores")
            if not np.all((scores >= 0) & (scores <= 1)):
                raise DetectionsError("scores must lie in [0, 1]")
            scores.setflags(write=False)
            object.__setattr__(self, "scores", scores)
        data = {}
        for key, values in dict(self.data).items():
            values = tuple(values)
            if len(values) != n:
                raise DetectionsError(f"column {key!r} has {len(values)} values for {n} boxes")
            data[key] = values
        object.__setattr__(self, "data", data)

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def empty(cls, kind: str, image_size: tuple[int, int]) -> "Detections":
        return cls(kind, image_size, np.zeros((0, 4)), ())

    @classmethod
    def from_barcodes(
        cls, image_size: tuple[int, int], formats: Sequence[str], values: Sequence[str], xyxy: Iterable
    ) -> "Detections":
        """Decoded barcodes: label = symbology (``Code128``, ``QRCode``...), ``value`` = decoded text."""
        return cls("barcodes", image_size, _clip(xyxy, image_size), tuple(formats), None, {"value": tuple(values)})

    @classmethod
    def from_text_lines(
        cls, image_size: tuple[int, int], texts: Sequence[str], xyxy: Iterable, scores: Sequence[float]
    ) -> "Detections":
        """OCR text lines: label ``text``, ``text`` column holds the line."""
        return cls(
            "text_lines", image_size, _clip(xyxy, image_size), ("text",) * len(texts), np.asarray(scores, float),
            {"text": tuple(texts)},
        )

    @classmethod
    def from_grid_boxes(
        cls,
        image_size: tuple[int, int],
        labels: Sequence[str],
        grid_xyxy: Iterable,
        scores: Sequence[float] | None = None,
        data: Mapping[str, Sequence[Any]] | None = None,
    ) -> "Detections":
        """Objects whose corners are integers on VL2's 0..999 grid of the image: ``px = v / 999 * W``.

        Callers validate the grid values first (the strict parser in ``model.vl2.grounding`` does);
        this conversion is the only one in the code base.
        """
        g = np.asarray(list(grid_xyxy), dtype=np.float64).reshape(-1, 4)  # [n, 4] on the 0..999 grid
        if np.any(g < 0) or np.any(g > GRID_MAX):
            raise DetectionsError(f"grid values must lie in 0..{GRID_MAX}")
        w, h = image_size
        px = g * np.array([w, h, w, h], dtype=np.float64) / GRID_MAX  # [n, 4] pixels
        return cls(
            "objects", image_size, px, tuple(labels),
            None if scores is None else np.asarray(scores, float),
            {k: tuple(v) for k, v in (data or {}).items()},
        )

    # ---- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, mask: np.ndarray | Sequence[bool] | Sequence[int]) -> "Detections":
        """Filter by boolean mask or integer index array (as supervision's ``Detections``)."""
        idx = np.arange(len(self))[np.asarray(mask)] if len(self) else np.zeros(0, int)
        return Detections(
            self.kind, self.image_size, self.xyxy[idx], tuple(self.labels[i] for i in idx),
            None if self.scores is None else self.scores[idx],
            {k: tuple(v[i] for i in idx) for k, v in self.data.items()},
        )

    @property
    def area(self) -> np.ndarray:
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    def to_rows(self) -> list[dict[str, Any]]:
        """The one conversion to rows, named as the columns of the kind's table: the box ``x1, y1, x2, y2`` and
        ``score``, then ``label, phrase, attributes`` (objects; data columns other than ``phrase`` go to
        ``attributes``), ``text`` (text_lines) or ``format, value`` (barcodes); text as SQL stores it
        (``storable``)."""
        rows = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            row: dict[str, Any] = {"x1": x1, "y1": y1, "x2": x2, "y2": y2,
                                   "score": None if self.scores is None else float(self.scores[i])}
            data = {key: values[i] for key, values in self.data.items()}
            if self.kind == "objects":
                phrase = data.pop("phrase", None)
                row.update(label=storable(self.labels[i]), phrase=None if phrase is None else storable(phrase),
                           attributes=data or None)
            elif self.kind == "text_lines":
                row.update(text=storable(data["text"]))
            else:
                row.update(format=self.labels[i], value=storable(data["value"]))
            rows.append(row)
        return rows


def storable(text: str) -> str:
    """Text as a SQL text column holds it: NUL (which a model's answer or a binary barcode can decode to) becomes
    U+FFFD, the replacement character; PostgreSQL refuses NUL in text."""
    return text.replace("\x00", "\ufffd")


def _clip(xyxy: Iterable, image_size: tuple[int, int]) -> np.ndarray:
    """Order corners and clip to the image: engines report points a hair outside the frame."""
    a = np.asarray(list(xyxy), dtype=np.float64).reshape(-1, 4)  # [n, 4]
    w, h = image_size
    x = np.clip(np.sort(a[:, [0, 2]], axis=1), 0, w)
    y = np.clip(np.sort(a[:, [1, 3]], axis=1), 0, h)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
