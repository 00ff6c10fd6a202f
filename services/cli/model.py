"""``vlwatch model ...``: model tooling commands. Torch is imported inside the commands only."""

from __future__ import annotations

import json

import click


@click.group("model")
def model_group() -> None:
    """DeepSeek-VL2 model tools."""


@model_group.command("dump")
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", required=True, help="User text; put one <image> per --image where the image goes.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An image file (repeatable, in prompt order).")
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(0, 4096))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--raw", is_flag=True, help="Tokenise the prompt as given, without the conversation template.")
@click.option("--exact/--fast", default=True, show_default=True,
              help="Pixels of the official processor, bit for bit (parity), or the fast path (PSNR >= 40 dB).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
def dump_command(checkpoint_dir: str, prompt: str, images: tuple[str, ...], max_new_tokens: int, dtype: str,
                 device: str, raw: bool, exact: bool, out: str) -> None:
    """Write input_ids, attention_mask, images, images_seq_mask, images_spatial_crop, inputs_embeds, logits
    (full forward, no cache) and generated_ids (greedy, no EOS stop) for one request to OUT."""
    n_slots = prompt.count("<image>")
    if n_slots != len(images):
        raise click.UsageError(f"the prompt has {n_slots} <image> placeholder(s) but {len(images)} --image given")
    from model.vl2.dump import run_dump  # imports torch

    try:
        summary = run_dump(checkpoint_dir, prompt, images, max_new_tokens, dtype, device, out,
                           apply_template=not raw, exact=exact)
    except (ValueError, RuntimeError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(summary))


@model_group.command("plan")
@click.argument("checkpoint_or_variant", required=False)
@click.option("--variant", type=click.Choice(["tiny", "small", "base"]), help="A release architecture.")
@click.option("--gpu-memory", "gpu_memory", required=True, help="Budget per GPU, e.g. 10GiB, 24G, 80GB.")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(1, 16), help="GPUs to spread layers over.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16", show_default=True)
@click.option("--tiles", default="3x2", show_default=True, help="Local tiles of the reference image, WxH "
              "(3x2 is a 1024x768 image).")
@click.option("--new-tokens", default=256, show_default=True, type=click.IntRange(0, 4096))
@click.option("--prefill-chunk", default=2048, show_default=True, type=click.IntRange(1, 8192))
@click.option("--max-batch", default=256, show_default=True, type=click.IntRange(1, 4096))
def plan_command(checkpoint_or_variant: str | None, variant: str | None, gpu_memory: str, gpus: int, dtype: str,
                 tiles: str, new_tokens: int, prefill_chunk: int, max_batch: int) -> None:
    """What fits the GPU memory budget: weights, KV per token, the largest concurrent batch and its tiles, the
    largest tiling, and the layer placement when the weights do not fit one GPU (the scheduler's own figures)."""
    from pathlib import Path

    import torch

    from model.vl2.config import ConfigError, VL2Config
    from model.vl2.plan import Workload, make_plan, parse_size

    try:
        budget = parse_size(gpu_memory)
        nw, nh = (int(x) for x in tiles.lower().split("x"))
    except ValueError as e:
        raise click.UsageError(str(e) if "memory size" in str(e) else
                               f"--tiles {tiles!r}: expected WxH, e.g. 3x2") from e
    name = checkpoint_or_variant
    if name and variant and name != variant:
        raise click.UsageError(f"give a checkpoint directory or --variant, not both ({name!r} and {variant!r})")
    name = name or variant
    if not name:
        raise click.UsageError("give a checkpoint directory or a variant (tiny, small, base)")
    try:
        cfg = VL2Config.from_checkpoint(name) if Path(name).is_dir() else VL2Config.from_name(name)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    work = Workload((nw, nh), 20, new_tokens, prefill_chunk)
    plan = make_plan(cfg, budget, gpus, getattr(torch, dtype), work, max_batch)
    click.echo("\n".join(plan.lines()))


COMMANDS = [model_group]
