"""One image's VL2 analyzers as scheduler requests, and the scheduler's answers back as their results.

Every prompt the analyzers put to the image (grounding phrases, the OCR prompt, the checks that look at this image
alone) goes into one ``ImageRequest``, so the vision tower runs once for all of them; the checks ``with_previous``
go into a second request that shows the previous image, then the current one. ``results_of`` hands each analyzer
the answers to its own prompts, in the order of its ``asks``, and the analyzer's ``result`` turns them into its
``AnalyzerResult`` -- the same conversion ``analyze`` makes, so a greedy answer gives the same rows either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

from PIL import Image

from model.analyzers import AnalyzerResult
from model.vl2.analyzer import Ask
from model.vl2.requests import ImageRequest, RequestResult, image_request

ALONE, PAIRED = "image", "pair"  # the two requests of an image: (key, ALONE) and (key, PAIRED)


@dataclass(frozen=True)
class ImagePrompts:
    """The requests of one image and, per analyzer, where the answers to its asks come back: (request key, index
    of the prompt in that request), in ask order."""

    requests: list[ImageRequest]
    places: list[list[tuple[Hashable, int]]]
    size: tuple[int, int]
    has_previous: bool

    @property
    def prompts(self) -> int:
        return sum(len(r.prompts) for r in self.requests)


def image_prompts(key: Hashable, analyzers: Sequence[Any], image: Image.Image, previous: Image.Image | None = None,
                  exact: bool = False) -> ImagePrompts:
    """The requests for ``analyzers`` (VL2 analyzers sharing one model) about ``image`` (upright RGB), keyed
    ``(key, "image")`` and ``(key, "pair")``; ``previous`` is the source's previous image, if any. ``exact``: the
    official pixel path (``analyze``'s), else the fast one (same tile grid and token ids)."""
    if any(a.model is not analyzers[0].model for a in analyzers):
        raise ValueError("the analyzers of one image must share one model")
    groups: dict[str, list[Ask]] = {ALONE: [], PAIRED: []}
    places = []
    for analyzer in analyzers:
        mine = []
        for ask in analyzer.asks(previous is not None):
            group = groups[PAIRED if ask.paired else ALONE]
            mine.append(((key, PAIRED if ask.paired else ALONE), len(group)))
            group.append(ask)
        places.append(mine)
    shown = {ALONE: image, PAIRED: [previous, image]}
    requests = [image_request((key, part), analyzers[0].processor, shown[part], [a.prompt for a in asks],
                              [a.config for a in asks], exact=exact)
                for part, asks in groups.items() if asks]
    return ImagePrompts(requests, places, image.size, previous is not None)


def results_of(analyzers: Sequence[Any], prompts: ImagePrompts,
               results: Mapping[Hashable, RequestResult]) -> list[AnalyzerResult]:
    """Each analyzer's result from the answers to its prompts (``results`` by request key, every request of
    ``prompts`` there). Raises ``RuntimeError`` with the scheduler's reason when a request failed."""
    for r in prompts.requests:
        if results[r.key].output is None:
            raise RuntimeError(results[r.key].error or "the request failed")
    out = []
    for analyzer, places in zip(analyzers, prompts.places):
        tokens = [results[k].output.tokens[i] for k, i in places]
        probs = [results[k].output.probs[i] for k, i in places]
        out.append(analyzer.result(prompts.size, prompts.has_previous, tokens, probs))
    return out
