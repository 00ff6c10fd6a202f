"""Preprocessing bench: the fast path (``exact=False``: reduced-scale JPEG decode, one shared resize, vectorised
normalisation) against the exact path (bit-identical to the official processor), one thread each, alternated in one
run, from JPEG bytes to model-ready tensors (token ids, image masks, tiles) on a 12 MP and a 1024x768 JPEG.

    python bench/preprocess.py [--repeats 11]

Prints per image: the best time of each path over the repeats and their ratio (goal >= 3x), both as the thread's CPU
time (what the path costs; on a shared machine wall time also counts waiting for a core) and as wall time; the tile
PSNR of fast against exact (worst tile and all tiles; goal >= 40 dB); and asserts the same tile grid and token ids.
The exact path is the processor as the worker runs it today (decoded image -> padded ``VL2Batch``); the fast path is
what the scheduler takes (``requests.image_request``: tiles [n, 3, S, S] + per-prompt ids, no batch padding).
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch and numpy start their pools

import argparse  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tests.images import camera_jpeg, camera_scene  # noqa: E402

from model.vl2.config import VL2Config  # noqa: E402
from model.vl2.generation import GenerationConfig  # noqa: E402
from model.vl2.fastprep import psnr  # noqa: E402
from model.vl2.processor import VL2Processor  # noqa: E402
from model.vl2.requests import image_request  # noqa: E402
from model.vl2.tokenizer import VL2Tokenizer  # noqa: E402

TOKENIZER = Path(__file__).resolve().parent.parent / "tests" / "model" / "data" / "tokenizer"
PROMPT = "<image>\n<|ref|>the pallet label<|/ref|>."


def frame(w: int, h: int, seed: int = 0) -> bytes:
    """A synthetic camera frame (``tests/images.py``), JPEG quality 90."""
    return camera_jpeg(camera_scene(w, h, seed, shapes=60), quality=90)


def run_exact(proc: VL2Processor, data: bytes):  # type: ignore[no-untyped-def]
    return proc([PROMPT], [[Image.open(io.BytesIO(data)).convert("RGB")]])


def run_fast(proc: VL2Processor, data: bytes):  # type: ignore[no-untyped-def]
    return image_request("bench", proc, data, [PROMPT], GenerationConfig())  # from the bytes: draft can apply


def bench_image(proc: VL2Processor, name: str, data: bytes, repeats: int) -> dict[str, object]:
    exact, fast = run_exact(proc, data), run_fast(proc, data)  # warm-up, and the outputs compared below
    assert fast.crops == [tuple(exact.images_spatial_crop[0, 0].tolist())], "tile grids differ"
    assert fast.prompts[0].input_ids.tolist() == exact.input_ids[0].tolist(), "token ids differ"
    assert fast.prompts[0].image_mask.tolist() == exact.images_seq_mask[0].tolist(), "image masks differ"
    want = exact.images[0]  # [tiles, 3, S, S]
    tiles = [psnr(a, b) for a, b in zip(fast.tiles, want)]
    cpu: dict[str, list[float]] = {"exact": [], "fast": []}
    wall: dict[str, list[float]] = {"exact": [], "fast": []}
    for _ in range(repeats):  # alternated, so both paths see the same machine state
        for label, fn in (("exact", run_exact), ("fast", run_fast)):
            gc.collect()
            c0, t0 = time.thread_time(), time.perf_counter()
            fn(proc, data)
            wall[label].append(time.perf_counter() - t0)
            cpu[label].append(time.thread_time() - c0)
    w, h = Image.open(io.BytesIO(data)).size
    return {"image": name, "size": f"{w}x{h}", "jpeg_bytes": len(data), "tile_grid": list(fast.crops[0]),
            "tiles": int(want.shape[0]),
            "exact_cpu_s": round(min(cpu["exact"]), 4), "fast_cpu_s": round(min(cpu["fast"]), 4),
            "ratio_cpu": round(min(cpu["exact"]) / min(cpu["fast"]), 2),
            "exact_wall_s": round(min(wall["exact"]), 4), "fast_wall_s": round(min(wall["fast"]), 4),
            "ratio_wall": round(min(wall["exact"]) / min(wall["fast"]), 2),
            "psnr_worst_tile_db": round(min(tiles), 1), "psnr_all_db": round(psnr(fast.tiles, want), 1),
            "same_grid_and_ids": True}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(1)
    proc = VL2Processor(VL2Tokenizer.from_dir(TOKENIZER), VL2Config.from_name("tiny").candidate_resolutions)
    rows = [bench_image(proc, "12MP", frame(4000, 3000, seed=1), args.repeats),
            bench_image(proc, "1024x768", frame(1024, 768, seed=2), args.repeats)]
    print(json.dumps({"threads": torch.get_num_threads(), "omp_num_threads": os.environ["OMP_NUM_THREADS"],
                      "runs": rows, "goals": {"ratio": 3.0, "psnr_db": 40.0},
                      "met": all(r["ratio_cpu"] >= 3.0 and r["psnr_worst_tile_db"] >= 40.0 for r in rows)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
