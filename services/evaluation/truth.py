"""The labelled set: a folder of images and one truth file (``truth.json``), documented in docs/evaluation.md.

Per image: ``barcodes`` (format, value, optional box), ``text_lines`` (text, optional box), ``objects`` (label,
box) and ``checks`` (check name -> expected answer). A kind whose key is absent from an image is *not labelled*
there and that image does not count for the kind's metrics; an empty list means "labelled: there are none".
Objects may also come as COCO: top-level ``categories`` and ``annotations`` (``bbox`` = ``[x, y, width, height]``,
``image_id`` = the image's ``id``), so a COCO detection file is a truth file for objects as it is.
Boxes elsewhere are vlwatch's ``[x1, y1, x2, y2]`` in upright pixels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

TRUTH_FILE = "truth.json"
KINDS = ("barcodes", "text_lines", "objects", "checks")

Box = tuple[float, float, float, float]


class TruthError(ValueError):
    """The truth file is unusable; the message names the file, the image and the field."""


@dataclass(frozen=True)
class ImageTruth:
    file_name: str
    barcodes: Optional[list[dict[str, Any]]] = None  # {"format", "value", "box"?}; None: not labelled
    text_lines: Optional[list[dict[str, Any]]] = None  # {"text", "box"?}
    objects: Optional[list[dict[str, Any]]] = None  # {"label", "box"}
    checks: Optional[dict[str, Any]] = None  # check name -> expected answer

    def labelled(self, kind: str) -> bool:
        return getattr(self, kind) is not None


@dataclass(frozen=True)
class TruthSet:
    folder: Path
    name: str
    images: list[ImageTruth]
    digest: str  # sha256 over the truth file and every image's bytes: two runs on the same set agree on it
    check_kinds: dict[str, Any] = field(default_factory=dict)

    def path(self, image: ImageTruth) -> Path:
        return self.folder / image.file_name


def load_truth(folder: Path, truth_file: str = TRUTH_FILE) -> TruthSet:
    path = Path(folder) / truth_file
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise TruthError(f"{path}: cannot read the truth file: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise TruthError(f"{path}: not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise TruthError(f"{path}: the top level must be an object with an 'images' list")
    coco = _coco_objects(raw, path)
    images, digest = [], hashlib.sha256(path.read_bytes())
    seen: set[str] = set()
    for i, entry in enumerate(raw["images"]):
        where = f"{path}: images[{i}]"
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise TruthError(f"{where}: needs a 'file_name'")
        if name in seen:
            raise TruthError(f"{where}: {name!r} is listed twice")
        seen.add(name)
        image_path = Path(folder) / name
        if not image_path.is_file():
            raise TruthError(f"{where}: no image file {image_path}")
        digest.update(name.encode() + b"\0" + hashlib.sha256(image_path.read_bytes()).digest())
        objects = _list(entry, "objects", where, _object)
        if entry.get("id") in coco:
            objects = (objects or []) + coco[entry["id"]]
        checks = entry.get("checks")
        if checks is not None and not isinstance(checks, dict):
            raise TruthError(f"{where}.checks: must map a check name to its expected answer")
        images.append(ImageTruth(name, _list(entry, "barcodes", where, _barcode),
                                 _list(entry, "text_lines", where, _text_line), objects, checks))
    return TruthSet(Path(folder), str(raw.get("name") or Path(folder).name), images, digest.hexdigest(),
                    dict(raw.get("checks") or {}))


def _list(entry: dict, key: str, where: str, parse: Any) -> Optional[list[dict[str, Any]]]:
    if key not in entry:
        return None
    if not isinstance(entry[key], list):
        raise TruthError(f"{where}.{key}: must be a list")
    return [parse(item, f"{where}.{key}[{j}]") for j, item in enumerate(entry[key])]


def _box(value: Any, where: str) -> Box:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) for v in value)):
        raise TruthError(f"{where}: a box is [x1, y1, x2, y2] in pixels")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 < x1 or y2 < y1:
        raise TruthError(f"{where}: a box needs x1 <= x2 and y1 <= y2, got {list(value)}")
    return x1, y1, x2, y2


def _barcode(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("value"), str):
        raise TruthError(f"{where}: a barcode is {{'format', 'value', 'box'?}} with a string value")
    out = {"format": str(item.get("format") or ""), "value": item["value"]}
    if item.get("box") is not None:
        out["box"] = _box(item["box"], f"{where}.box")
    return out


def _text_line(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise TruthError(f"{where}: a text line is {{'text', 'box'?}}")
    out: dict[str, Any] = {"text": item["text"]}
    if item.get("box") is not None:
        out["box"] = _box(item["box"], f"{where}.box")
    return out


def _object(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("label"), str) or "box" not in item:
        raise TruthError(f"{where}: an object is {{'label', 'box'}}")
    return {"label": item["label"], "box": _box(item["box"], f"{where}.box")}


def _coco_objects(raw: dict, path: Path) -> dict[Any, list[dict[str, Any]]]:
    """Objects of the COCO ``annotations`` by image id (bbox ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``)."""
    if not isinstance(raw.get("annotations"), list):
        return {}
    names = {c.get("id"): c.get("name") for c in raw.get("categories") or [] if isinstance(c, dict)}
    out: dict[Any, list[dict[str, Any]]] = {}
    ids = {e.get("id") for e in raw["images"] if isinstance(e, dict) and e.get("id") is not None}
    for j, ann in enumerate(raw["annotations"]):
        where = f"{path}: annotations[{j}]"
        if not isinstance(ann, dict) or ann.get("category_id") not in names or ann.get("image_id") not in ids:
            raise TruthError(f"{where}: needs an image_id of the images and a category_id of the categories")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise TruthError(f"{where}.bbox: COCO boxes are [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        out.setdefault(ann["image_id"], []).append(
            {"label": names[ann["category_id"]], "box": _box([x, y, x + w, y + h], f"{where}.bbox")})
    for image_id in ids:  # in a COCO file an image without annotations is labelled: it holds no objects
        out.setdefault(image_id, [])
    return out
