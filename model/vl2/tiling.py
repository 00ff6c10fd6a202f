"""The official dynamic-tiling choice, shared by the exact processor and the fast preprocessing path."""

from __future__ import annotations

from typing import Sequence


def select_best_resolution(image_size: tuple[int, int], candidates: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The official choice of (width, height) for the local views: the candidate with the largest effective
    (downscaled, truncated, capped at the original area) resolution, ties broken by the smallest waste; the
    first candidate in list order keeps a full tie (strict comparisons)."""
    ow, oh = image_size
    best: tuple[int, int] | None = None
    max_eff, min_waste = 0, float("inf")
    for w, h in candidates:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            max_eff, min_waste, best = eff, waste, (int(w), int(h))
    if best is None:
        raise ValueError(f"no candidate resolution fits an image of size {image_size}")
    return best
