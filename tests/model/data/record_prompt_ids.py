"""Records token ids from the OFFICIAL DeepseekVLV2Processor (github.com/deepseek-ai/DeepSeek-VL2 @ ef9f91e,
transformers 4.38.2) for the prompt forms vlwatch's vl2-ask / vl2-ground use. Run in a separate venv (never the
project's; the official code is loaded from outside the repository, never copied into it):
  /tmp/refvenv/bin/python tests/model/data/record_prompt_ids.py . tests/model/data/reference/prompt_cases.json
(the official package unpacked at /tmp/dsvl2; see tests/model/data/README.md)
Only ids, masks and crops are recorded (tiles are covered by the processor parity cases). torchvision is
replaced by a minimal ToTensor/Normalize/Compose (tiles are not recorded)."""
import importlib.util, json, sys, types
from pathlib import Path

import numpy as np
import torch
import transformers  # before the shim: transformers probes for torchvision
from transformers import LlamaTokenizerFast  # noqa: F401

# --- torchvision shim (only what the processor module imports; tile values are not recorded) ---
tv = types.ModuleType("torchvision"); tvt = types.ModuleType("torchvision.transforms")
class Compose:
    def __init__(self, ts): self.ts = ts
    def __call__(self, x):
        for t in self.ts: x = t(x)
        return x
class ToTensor:
    def __call__(self, pic):
        return torch.from_numpy(np.array(pic, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
class Normalize:
    def __init__(self, mean, std, inplace=False): self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    def __call__(self, x): return (x - self.mean) / self.std
tvt.Compose, tvt.ToTensor, tvt.Normalize = Compose, ToTensor, Normalize
tv.transforms = tvt
sys.modules["torchvision"] = tv; sys.modules["torchvision.transforms"] = tvt

# --- load the official processor module without the package __init__ (which imports the model, xformers) ---
OFF = Path("/tmp/dsvl2/deepseek_vl2/models")
pkg = types.ModuleType("dsm"); pkg.__path__ = [str(OFF)]; sys.modules["dsm"] = pkg
for name in ("conversation", "processing_deepseek_vl_v2"):
    spec = importlib.util.spec_from_file_location(f"dsm.{name}", OFF / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); sys.modules[f"dsm.{name}"] = mod; spec.loader.exec_module(mod)
from dsm.processing_deepseek_vl_v2 import DeepseekVLV2Processor
from PIL import Image
import transformers
assert transformers.__version__ == "4.38.2", transformers.__version__

repo = Path(sys.argv[1]); out = Path(sys.argv[2])
data = repo / "tests/model/data"
proc = DeepseekVLV2Processor.from_pretrained(str(data / "checkpoints/tiny"))

PREV, CUR = "This is the previous image: <image>\n", "This is the current image: <image>\n"
CASES = [
    ("check_yes_no", "<image>\nIs the fire exit blocked by any object? Answer yes or no.", ["images/a.png"]),
    ("check_number", "<image>\nHow many pallets are on the dock? Answer with a number.", ["images/c.png"]),
    ("check_choice", "<image>\nIs the dock door open or closed? Answer with one of: open, closed.", ["images/b.png"]),
    ("check_text", "<image>\nWhat is written on the label?", ["images/b.png"]),
    ("grounded_description", "<image>\n<|grounding|>Describe anything unsafe in this image.", ["images/a.png"]),
    ("find_all", "<image>\nFind all the <|ref|>pallet<|/ref|>.", ["images/c.png"]),
    ("two_images", PREV + CUR + "Has the pallet on the left moved? Answer yes or no.", ["images/a.png", "images/b.png"]),
    ("two_images_grounded", PREV + CUR + "<|grounding|>What changed since the previous image?", ["images/b.png", "images/c.png"]),
]
cases = []
for name, prompt, imgs in CASES:
    pil = [Image.open(data / "reference" / p).convert("RGB") for p in imgs]
    conv = [{"role": "<|User|>", "content": prompt, "images": imgs}, {"role": "<|Assistant|>", "content": ""}]
    r = proc(conversations=conv, images=pil, force_batchify=True, system_prompt="")
    cases.append({"name": name, "prompt": prompt, "images": imgs, "sft_format": r.sft_format[0],
                  "input_ids": r.input_ids[0].tolist(), "images_seq_mask": r.images_seq_mask[0].bool().tolist(),
                  "images_spatial_crop": r.images_spatial_crop[0].tolist()})
    print(name, len(cases[-1]["input_ids"]), cases[-1]["images_spatial_crop"])
meta = {"recorded_with": "official DeepseekVLV2Processor, github.com/deepseek-ai/DeepSeek-VL2 @ ef9f91e, transformers "
        "4.38.2, conversations path (system_prompt='', force_batchify=True), tokenizer of checkpoints/tiny",
        "cases": cases}
lines = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)  # one case per line
out.write_text(f'{{"recorded_with": {json.dumps(meta["recorded_with"])},\n "cases": [\n{lines}\n]}}\n',
               encoding="utf-8")
