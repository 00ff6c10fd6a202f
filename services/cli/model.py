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
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
def dump_command(checkpoint_dir: str, prompt: str, images: tuple[str, ...], max_new_tokens: int, dtype: str,
                 device: str, raw: bool, out: str) -> None:
    """Write input_ids, attention_mask, images, images_seq_mask, images_spatial_crop, inputs_embeds, logits
    (full forward, no cache) and generated_ids (greedy, no EOS stop) for one request to OUT."""
    n_slots = prompt.count("<image>")
    if n_slots != len(images):
        raise click.UsageError(f"the prompt has {n_slots} <image> placeholder(s) but {len(images)} --image given")
    from model.vl2.dump import run_dump  # imports torch

    try:
        summary = run_dump(checkpoint_dir, prompt, images, max_new_tokens, dtype, device, out,
                           apply_template=not raw)
    except (ValueError, RuntimeError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(summary))


COMMANDS = [model_group]
