"""GPU bench: the full-size DeepSeek-VL2-Tiny architecture with random weights, bf16 on CUDA, grounding-style
requests on 1024x768 images (3x2 local tiles + global = 7 tiles, 1415 image tokens), 32 new tokens each.
Reports images/s at batch 1 and at the best batch size tried, peak memory, and achieved TFLOP/s.

    python bench/vl2_gpu.py [--variant tiny] [--batches 1,2,4,8,16,32] [--new-tokens 32]

Random weights decode the same number of tokens as real ones (no EOS stop), so throughput is representative;
outputs are meaningless. Exits with a message (status 2) where no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from vl2_common import random_model, synthetic_batch, timed  # noqa: E402

from model.vl2.config import VL2Config  # noqa: E402
from model.vl2.generation import GenerationConfig, generate  # noqa: E402
from model.vl2.memory import estimate_memory  # noqa: E402

# select_best_resolution for 1024x768 over the release candidates gives (1152, 768): 3 x 2 tiles.
CROP_1024x768 = (3, 2)
# "<image>\n<|ref|>the person on the left<|/ref|>." in the template: about 20 text tokens.
TEXT_TOKENS = 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda (the bench); cpu only smoke-tests the code path")
    args = ap.parse_args()
    dev = args.device
    cuda = dev.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("vl2_gpu: no CUDA device is available here; this bench needs one (it measures bf16 CUDA throughput).",
              file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = VL2Config.from_name(args.variant)
    model = random_model(cfg, torch.bfloat16, dev)
    weights_gb = torch.cuda.memory_allocated() / 1e9 if cuda else None
    gcfg = GenerationConfig(max_new_tokens=args.new_tokens, eos_token_id=None)
    flops_img = model.flops_per_image(*CROP_1024x768)
    results = []
    for bs in [int(x) for x in args.batches.split(",")]:
        try:
            batch = synthetic_batch(cfg, bs, CROP_1024x768, TEXT_TOKENS, dev)
            generate(model, batch, gcfg)  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            secs = min(timed(lambda: generate(model, batch, gcfg), sync)[0] for _ in range(args.repeats))
        except torch.OutOfMemoryError:  # the largest batch that fits has been measured
            results.append({"batch": bs, "error": "out of memory"})
            torch.cuda.empty_cache()
            break
        est = estimate_memory(cfg, bs, CROP_1024x768, torch.bfloat16, args.new_tokens, TEXT_TOKENS)
        results.append({"batch": bs, "seconds": round(secs, 4), "images_per_s": round(bs / secs, 2),
                        "new_tokens_per_s": round(bs * args.new_tokens / secs, 1),
                        "prefill_tflops_per_s": round(bs * flops_img / secs / 1e12, 1),
                        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
                        "estimated_mem_gb": round(est.total / 1e9, 2)})
        batch = None  # free the inputs before the next size
        if cuda:
            torch.cuda.empty_cache()
    ok = [r for r in results if "images_per_s" in r]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    print(json.dumps({"device": torch.cuda.get_device_name() if cuda else dev, "variant": args.variant,
                      "weights_gb": round(weights_gb, 2) if weights_gb is not None else None,
                      "image": "1024x768", "tiles": 1 + CROP_1024x768[0] * CROP_1024x768[1],
                      "tokens_per_image": cfg.image_tokens(*CROP_1024x768), "gflops_per_image": round(flops_img / 1e9),
                      "new_tokens": args.new_tokens, "runs": results,
                      "batch1_images_per_s": ok[0]["images_per_s"] if ok and ok[0]["batch"] == 1 else None,
                      "best": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
