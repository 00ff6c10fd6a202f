#!/usr/bin/env python3
"""Regenerate samples/: warehouse shelf labels and camera-like loading-dock scenes with known contents.

Deterministic (fixed seeds, Pillow's bundled font): running it twice writes the same bytes with the same
Pillow/libjpeg. Writes the images, samples/expected.json (every barcode value a reader must decode and every
SKU OCR must read, per file) and nothing else; samples/README.md describes them by hand.

    .venv/bin/python scripts/make_samples.py [--out samples]

Needs the ``test`` extra (segno, python-barcode); labels are drawn by ``tests.images.draw_label``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.images import draw_label, font  # noqa: E402


def _qr_url(sku: str) -> str:
    return f"https://wh.example/sku/{sku}"


def _camera(im: Image.Image, seed: int, noise: float = 3.0, blur: float = 0.6) -> Image.Image:
    """A little lens blur and sensor noise (seeded)."""
    im = im.filter(ImageFilter.GaussianBlur(blur))
    rng = np.random.default_rng(seed)
    a = np.asarray(im).astype(np.float32) + rng.normal(0, noise, (im.height, im.width, 1))  # [H, W, 3]
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def _save(im: Image.Image, path: Path) -> None:
    if path.suffix == ".png":
        im.save(path, format="PNG", optimize=True)
    else:
        im.save(path, format="JPEG", quality=88, optimize=True)


def shelf_label(sku: str, title: str, **kw: object) -> tuple[Image.Image, dict]:
    im, _ = draw_label(sku, title=title, **kw)
    barcodes = ([sku] if kw.get("code128", True) else []) + ([_qr_url(sku)] if kw.get("qr", True) else [])
    return im, {"barcodes": barcodes, "skus": [sku]}


def shelf_photo(skus: list[str], seed: int) -> tuple[Image.Image, dict]:
    """Labels on a grey shelf edge, slightly tilted, photographed (blur + noise); 3.2 px per bar module."""
    rng = random.Random(seed)
    labels = []
    for sku in skus:
        lab, _ = draw_label(sku, title=f"Aisle {rng.randint(1, 9)}  Bay {rng.randint(10, 40)}", bar_px=4, qr_px=5)
        lab = lab.resize((int(lab.width * 0.8), int(lab.height * 0.8)), Image.LANCZOS)
        labels.append(lab.rotate(rng.uniform(-2.0, 2.0), expand=True, fillcolor=(92, 96, 104),
                                 resample=Image.BICUBIC))
    width = 40 + sum(lab.width + 60 for lab in labels)
    im = Image.new("RGB", (width, 620), (92, 96, 104))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 520, width, 620], fill=(60, 62, 70))  # the shelf beam below the labels
    for i in range(0, width, 200):  # boxes on the shelf behind
        d.rectangle([i + 10, 0, i + 180, 60], fill=(150 + rng.randint(0, 40), 110, 70))
    x = 40
    for lab in labels:
        im.paste(lab, (x, 90 + rng.randint(0, 30)))
        x += lab.width + 60
    barcodes = [v for s in skus for v in (s, _qr_url(s))]
    return _camera(im, seed), {"barcodes": barcodes, "skus": list(skus)}


def _forklift(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.rectangle([x, y, x + 170, y + 120], fill=(230, 170, 20))  # body
    d.rectangle([x + 20, y - 110, x + 130, y], outline=(40, 40, 40), width=8)  # cage
    d.rectangle([x + 170, y - 200, x + 185, y + 120], fill=(70, 70, 70))  # mast
    d.rectangle([x + 185, y + 100, x + 300, y + 112], fill=(70, 70, 70))  # forks
    for wx in (x + 15, x + 115):
        d.ellipse([wx, y + 95, wx + 55, y + 150], fill=(25, 25, 25))


def dock_scene(sku: str, seed: int, dark: bool = False) -> tuple[Image.Image, dict]:
    """A loading dock drawn with shapes: doors, floor, a forklift, a wrapped pallet carrying a label."""
    rng = random.Random(seed)
    w, h = 1600, 1000
    wall = (120, 124, 130) if not dark else (70, 72, 78)
    im = Image.new("RGB", (w, h), wall)
    d = ImageDraw.Draw(im)
    d.polygon([(0, 640), (w, 640), (w, h), (0, h)], fill=(150, 148, 140) if not dark else (90, 88, 84))
    for i, x in enumerate((60, 520, 980)):  # dock doors with numbers
        d.rectangle([x, 90, x + 380, 600], fill=(80, 84, 92) if i != 1 else (30, 32, 36))
        for yy in range(110, 600, 45):
            d.line([x + 10, yy, x + 370, yy], fill=(60, 64, 70), width=3)
        d.text((x + 160, 30), f"D{i + 1:02d}", fill=(250, 210, 40), font=font(44))
    d.rectangle([0, 630, w, 645], fill=(240, 200, 30))  # the dock edge's yellow stripe
    _forklift(d, 1130, 700)
    # the pallet: wooden base and a stretch-wrapped load
    px, py = 300, 470
    d.rectangle([px, py + 380, px + 720, py + 430], fill=(150, 105, 60))
    for bx in range(px, px + 720, 120):
        d.rectangle([bx, py + 430, bx + 50, py + 470], fill=(120, 85, 45))
    for r in range(3):
        for c in range(4):
            shade = 165 + rng.randint(-15, 15)
            d.rectangle([px + c * 180 + 4, py + r * 125 + 4, px + c * 180 + 176, py + r * 125 + 121],
                        fill=(shade, shade - 45, shade - 95), outline=(110, 80, 50), width=2)
    label, _ = draw_label(sku, title="Pallet  Inbound", bar_px=4, qr_px=5)
    label = label.resize((int(label.width * 0.8), int(label.height * 0.8)), Image.LANCZOS)  # 3.2 / 4 px per module
    label = label.rotate(rng.uniform(-3, 3), expand=True, fillcolor=(170, 125, 75), resample=Image.BICUBIC)
    im.paste(label, (px + 360 - label.width // 2, py + 20))
    im = _camera(im, seed, noise=4.0 if dark else 3.0, blur=0.8)
    return im, {"barcodes": [sku, _qr_url(sku)], "skus": [sku]}


def empty_aisle(seed: int) -> tuple[Image.Image, dict]:
    """A racking aisle with cartons and no labels: nothing to read."""
    rng = random.Random(seed)
    im = Image.new("RGB", (1280, 800), (200, 200, 196))
    d = ImageDraw.Draw(im)
    for x in (80, 640):
        d.rectangle([x, 40, x + 20, 800], fill=(30, 80, 170))
        d.rectangle([x + 520, 40, x + 540, 800], fill=(30, 80, 170))
        for y in (260, 520):
            d.rectangle([x, y, x + 540, y + 18], fill=(240, 120, 20))
            for bx in range(x + 30, x + 500, 110):
                bh = rng.randint(120, 200)
                d.rectangle([bx, y - bh, bx + 95, y - 2], fill=(180 + rng.randint(-20, 20), 140, 90))
    return _camera(im, seed), {"barcodes": [], "skus": []}


def build(out: Path) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    samples: dict[str, tuple[Image.Image, dict]] = {
        "label_WH-10427.png": shelf_label("WH-10427", "Aisle 4  Bay 12"),
        "label_WH-20931.png": shelf_label("WH-20931", "Aisle 7  Bay 03", bar_px=4, qr_px=5),
        "label_WH-38812_qr_only.png": shelf_label("WH-38812", "Aisle 2  Bay 31", code128=False),
        "label_WH-40075_code128_only.png": shelf_label("WH-40075", "Cold store  C2", qr=False),
        "shelf_photo_WH-51200_WH-51201.jpg": shelf_photo(["WH-51200", "WH-51201"], seed=5),
        "dock_scene_WH-60318.jpg": dock_scene("WH-60318", seed=6),
        "dock_scene_dark_WH-72044.jpg": dock_scene("WH-72044", seed=7, dark=True),
        "aisle_no_labels.jpg": empty_aisle(seed=8),
    }
    expected = {}
    for name, (im, exp) in samples.items():
        _save(im, out / name)
        expected[name] = exp
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "samples")
    args = ap.parse_args(argv)
    expected = build(args.out)
    total = sum((args.out / n).stat().st_size for n in expected)
    print(f"wrote {len(expected)} images ({total / 1e6:.2f} MB) and expected.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
