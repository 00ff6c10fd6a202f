"""Barcode reading on camera scenes: today's single zxing-cpp pass against single + scene pass, same run.

    .venv/bin/python bench/barcode_scenes.py [--scenes 16] [--seed 10] [--rounds 3]

Generates the evaluation set (scripts/make_evalset.py) into a temporary folder, decodes every image once per
round with each reader, alternating the order each round (this shared machine's speed drifts between consecutive
measurements), and prints per reader: decode rate, recall and precision by value, wrong values (scenes, and all
images), CPU seconds per image (process time, all threads), and the scene pass's CPU as a ratio of the single
pass's. Goal: scene recall >= 0.95 with no wrong value at <= 2x the single pass's CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from model.decode import decode_image
    from model.engines.barcode import BarcodeAnalyzer
    from scripts.make_evalset import build
    from services.evaluation.metrics import barcode_metrics
    from services.evaluation.truth import load_truth

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        build(Path(d), args.scenes, args.seed)
        truth = load_truth(Path(d))
        images = [(t, decode_image(truth.path(t).read_bytes(), max_bytes=1 << 30, max_pixels=1 << 30).image)
                  for t in truth.images]
    readers = {"single pass": BarcodeAnalyzer(scene_pass=False), "single + scene pass": BarcodeAnalyzer()}
    cpu = {name: 0.0 for name in readers}
    reads = {}
    for r in range(args.rounds):
        for name in (list(readers) if r % 2 == 0 else list(readers)[::-1]):
            t = time.process_time()
            reads[name] = [readers[name].read(im) for _, im in images]
            cpu[name] += time.process_time() - t
    n = len(images)
    print(f"{n} images ({sum(1 for t, _ in images if t.file_name.startswith('scene'))} scenes), "
          f"{sum(len(t.barcodes or []) for t, _ in images)} symbols, {args.rounds} rounds")
    for name in readers:
        rows = [d.to_rows() for d in reads[name]]
        every = barcode_metrics((t.barcodes, p) for (t, _), p in zip(images, rows))
        scenes = barcode_metrics((t.barcodes, p) for (t, _), p in zip(images, rows) if t.file_name.startswith("scene"))
        print(f"{name:<20} scenes: decode rate {scenes['decode_rate']:.3f} recall {scenes['recall']:.3f} "
              f"precision {scenes['precision']:.3f} wrong {scenes['wrong_values']} | all: decode rate "
              f"{every['decode_rate']:.3f} wrong {every['wrong_values']} | "
              f"{cpu[name] / args.rounds / n * 1000:.1f} ms CPU per image")
    base, new = cpu["single pass"], cpu["single + scene pass"]
    print(f"scene pass CPU / single pass CPU = {new / base:.2f} (goal <= 2.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
