"""Dump one request's tensors (inputs, embeddings, full-forward logits, greedy ids) to a safetensors file, for
parity checks against the official implementation's recorded values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from model.vl2.generation import BatchLike, GenerationConfig, generate
from model.vl2.modeling import DeepseekVL2Model

DUMP_KEYS = ("input_ids", "attention_mask", "images", "images_seq_mask", "images_spatial_crop", "inputs_embeds",
             "logits", "generated_ids")


@torch.no_grad()
def dump_tensors(model: DeepseekVL2Model, batch: BatchLike, max_new_tokens: int) -> dict[str, torch.Tensor]:
    """The eight dump tensors for a batch of one request. ``generated_ids`` are greedy, without EOS stop."""
    if batch.input_ids.shape[0] != 1:
        raise ValueError(f"dump takes one request, got a batch of {batch.input_ids.shape[0]}")
    device = model.image_newline.device
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device).bool()
    seq_mask = batch.images_seq_mask.to(device).bool()
    images = batch.images.to(device)
    image_embeds = model.image_embeddings(images, batch.images_spatial_crop)  # one vision pass for both uses
    embeds = model.prepare_inputs_embeds(ids, images_seq_mask=seq_mask, image_embeds=image_embeds)  # [1, T, D]
    logits = model(ids, mask, inputs_embeds=embeds)  # [1, T, V] fp32, no cache
    out = generate(model, batch, GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=None),
                   image_embeds=image_embeds)
    return {
        "input_ids": batch.input_ids.long(),
        "attention_mask": batch.attention_mask.bool(),
        "images": batch.images,  # [1, tiles, 3, H, W]
        "images_seq_mask": batch.images_seq_mask.bool(),
        "images_spatial_crop": batch.images_spatial_crop.long(),  # [1, n_images, 2]
        "inputs_embeds": embeds,
        "logits": logits,
        "generated_ids": torch.tensor([out.tokens[0]], dtype=torch.long),
    }


def run_dump(checkpoint_dir: str | Path, prompt: str, images: Sequence[str | Path], max_new_tokens: int,
             dtype: str, device: str, out: str | Path, apply_template: bool = True,
             processor: Any = None, exact: bool = True) -> dict[str, Any]:
    """Load the checkpoint (and its processor unless one is given), run ``dump_tensors``, write ``out``.
    ``exact`` (the default, for parity) takes the official pixel path; ``False`` the fast one."""
    from PIL import Image

    from model.vl2.loader import load_model

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    if processor is None:
        from model.vl2.processor import VL2Processor

        processor = VL2Processor.from_checkpoint(checkpoint_dir)
    model, info = load_model(checkpoint_dir, dtype=torch_dtype, device=device)
    pil = [Image.open(p).convert("RGB") for p in images]
    batch = processor([prompt], [pil], apply_template=apply_template, exact=exact)
    tensors = dump_tensors(model, batch, max_new_tokens)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out), metadata={"checkpoint_digest": info.digest or "", "dtype": dtype,
                                           "prompt": prompt, "max_new_tokens": str(max_new_tokens)})
    return {"out": str(out), "digest": info.digest, "tokens": int(tensors["input_ids"].shape[1]),
            "generated_ids": tensors["generated_ids"][0].tolist()}
