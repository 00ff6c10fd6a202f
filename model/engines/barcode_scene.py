"""The second barcode pass for camera scenes: find the regions that look like barcodes, straighten and enlarge each
one the first pass left unread, and read it again.

zxing-cpp over a whole scene reads upright, well-resolved symbols; it misses 1D codes turned by more than a few
degrees (its scan lines leave the bars), codes of 1.5-2 px per module, and dim, noisy ones. This pass looks for
them where they plausibly are, so a label-free image pays only for the search (~15 ms on 1.6 MP):

1. **Search** at half resolution with the gradient structure tensor over 9x9 windows: a barcode is busy (high
   gradient energy) with edges of alternating sign (the summed signed gradient is small next to the summed
   magnitude, which rules out single edges: label borders, racking, shelf beams), and either *coherent* (one
   direction: the bars of a 1D code) or *incoherent* (modules of a QR or DataMatrix). Components of those masks
   are the candidates; a 1D candidate narrower than 48 px across its bars, or a 2D candidate not roughly square,
   is dropped.
2. **Read** each candidate whose centre is not inside a symbol the first pass read: the region is cut out turned
   so that the bars stand upright (1D, along the region's mean gradient direction) or along its bounding
   rectangle (2D), enlarged (1.5x for bars, 2x for modules), stretched to the full grey range, lightly smoothed
   along the bars (1D), and given to zxing-cpp with only the symbologies of its kind.

Reads stay checksummed by zxing-cpp, and three rules keep the pass from adding false reads:
- a second read of a symbol already read (same format and value, overlapping box) is dropped: nothing twice;
- a second-pass read that lies on another read of the same format with another value is a conflict (EAN-13's one
  check digit lets a dark, noisy crop decode to a wrong number): the second-pass reads in it are dropped;
- a short retail code (UPC-E, EAN-8) whose centre lies on an EAN-13 or UPC-A read is a fragment of it (zxing-cpp's
  scan lines sometimes decode part of the long symbol as a short one, checksum and all) and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Read = tuple[str, str, list[float]]  # (format name, value, box x1 y1 x2 y2)

import numpy as np

WINDOW = 9  # structure tensor window at half resolution, pixels
MIN_ENERGY = 1600.0  # mean squared gradient in the window (Sobel on 0..255 grey)
MAX_SIGNED = 0.35  # |sum of gradients| / sum of |gradients|: below for alternating edges
COHERENT, INCOHERENT = 0.6, 0.45  # coherence above: bars; below: 2D modules
MIN_BARS_WIDTH = 48  # pixels across the bars of a 1D candidate
SHORT_RETAIL, LONG_RETAIL = ("UPCE", "EAN8"), ("EAN13", "UPCA")


@dataclass(frozen=True)
class Candidate:
    kind: str  # "linear" or "matrix"
    points: np.ndarray  # [n, 2] full-resolution pixels of the region
    angle: float  # radians: the direction across the bars (linear) or of the region's rectangle (matrix)


def find_candidates(gray: np.ndarray) -> list[Candidate]:
    """Regions of ``gray`` (``[H, W]`` uint8) that look like 1D or 2D barcodes."""
    import cv2

    h, w = gray.shape
    if min(h, w) < 32:
        return []
    small = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_AREA).astype(np.float32)  # [H/2, W/2]
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    k = (WINDOW, WINDOW)
    jxx, jyy, jxy = (cv2.boxFilter(p, -1, k) for p in (gx * gx, gy * gy, gx * gy))
    energy = jxx + jyy
    coherence = cv2.magnitude(jxx - jyy, 2 * jxy)  # times energy: (l1 - l2) of the tensor
    magnitude = cv2.boxFilter(cv2.magnitude(gx, gy), -1, k)
    signed = cv2.magnitude(cv2.boxFilter(gx, -1, k), cv2.boxFilter(gy, -1, k))
    busy = (energy > MIN_ENERGY) & (signed < MAX_SIGNED * magnitude)
    found: list[Candidate] = []
    for kind, mask, close, min_area in (("linear", busy & (coherence > COHERENT * energy), 15, 250),
                                        ("matrix", busy & (coherence < INCOHERENT * energy), 7, 120)):
        m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m)
        for i in range(1, n):
            x0, y0, bw, bh, area = stats[i]
            if area < min_area:
                continue
            ys, xs = np.nonzero(labels[y0:y0 + bh, x0:x0 + bw] == i)
            ys, xs = ys + y0, xs + x0
            points = np.stack([xs, ys], axis=1).astype(np.float32) * 2 + 1  # [n, 2] full resolution
            if kind == "linear":
                angle = 0.5 * float(np.arctan2(2 * jxy[ys, xs].sum(), (jxx[ys, xs] - jyy[ys, xs]).sum()))
                if np.ptp(points @ np.array([np.cos(angle), np.sin(angle)])) < MIN_BARS_WIDTH:
                    continue
            else:
                (_, _), (rw, rh), deg = cv2.minAreaRect(points)
                if min(rw, rh) < 24 or max(rw, rh) > 2.2 * min(rw, rh):
                    continue
                angle = float(np.radians(deg))
            found.append(Candidate(kind, points, angle))
    return found


def second_pass(zx: Any, gray: np.ndarray, first: list[Read], try_invert: bool) -> list[Read]:
    """``first`` (the first pass's reads) and what the candidates it left unread add, by the rules above."""
    first_boxes = [box for _, _, box in first]
    added: list[Read] = []
    for cand in find_candidates(gray):
        cx, cy = (float(v) for v in cand.points.mean(axis=0))
        if covered([cx, cy, cx, cy], first_boxes):
            continue
        for fmt, value, box in read_candidate(zx, gray, cand, try_invert):
            if not any(f == fmt and v == value and overlaps(box, b) for f, v, b in first + added):
                added.append((fmt, value, box))
    added = [r for r in added if not any(o is not r and o[0] == r[0] and o[1] != r[1] and _on(r[2], o[2])
                                         for o in first + added)]
    reads = first + added
    longs = [b for f, _, b in reads if f in LONG_RETAIL]
    return [r for r in reads if r[0] not in SHORT_RETAIL or not covered(r[2], longs, 0.0)]


def _on(a: list[float], b: list[float]) -> bool:
    """One box's centre lies inside the other."""
    return covered(a, [b], 0.0) or covered(b, [a], 0.0)


def read_candidate(zx: Any, gray: np.ndarray, cand: Candidate, try_invert: bool) -> list[Read]:
    """(format name, value, box in ``gray``'s pixels) of every symbol zxing-cpp reads in the straightened region."""
    import cv2

    linear = cand.kind == "linear"
    scale, margin_u, margin_v = (1.5, 0.25, 0.15) if linear else (2.0, 0.2, 0.2)
    c, s = float(np.cos(cand.angle)), float(np.sin(cand.angle))
    u = cand.points @ np.array([c, s])  # across the bars
    v = cand.points @ np.array([-s, c])  # along the bars
    mu, mv = margin_u * np.ptp(u) + 12, margin_v * np.ptp(v) + 6  # quiet zones the region itself leaves out
    u0, v0 = u.min() - mu, v.min() - mv
    size = (int((np.ptp(u) + 2 * mu) * scale), int((np.ptp(v) + 2 * mv) * scale))
    # crop pixel (x, y) -> image pixel: origin + x / scale along u + y / scale along v
    to_image = np.array([[c / scale, -s / scale, u0 * c - v0 * s], [s / scale, c / scale, u0 * s + v0 * c]])
    crop = cv2.warpAffine(gray, to_image.astype(np.float32), size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    crop = cv2.normalize(crop, None, 0, 255, cv2.NORM_MINMAX)
    if linear:
        crop = cv2.blur(crop, (1, 5))  # along the (now upright) bars: sensor noise averages out, widths stay
    formats = zx.barcode_formats_from_str("AllLinear" if linear else "AllMatrix")
    out = []
    for b in zx.read_barcodes(crop, formats=formats, try_rotate=False, try_downscale=False, try_invert=try_invert):
        if not b.valid:
            continue
        p = b.position
        corners = np.array([[q.x, q.y, 1.0] for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)])
        img = corners @ to_image.T  # [4, 2]
        out.append((b.format.name, b.text, [float(img[:, 0].min()), float(img[:, 1].min()),
                                            float(img[:, 0].max()) + 1, float(img[:, 1].max()) + 1]))
    return out


def covered(box: list[float], boxes: list[list[float]], pad: float = 5.0) -> bool:
    """Whether ``box``'s centre lies inside one of ``boxes`` (grown by ``pad``)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(b[0] - pad <= cx <= b[2] + pad and b[1] - pad <= cy <= b[3] + pad for b in boxes)


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
