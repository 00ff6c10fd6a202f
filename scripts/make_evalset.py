#!/usr/bin/env python3
"""Generate the labelled evaluation set: close-up shelf labels and camera-like warehouse scenes with known contents.

Seeded and deterministic (fixed seeds, Pillow's bundled font): the same Pillow/libjpeg write the same bytes. Writes
the images and ``truth.json`` (the format of docs/evaluation.md: per image its barcodes with format, value and box,
its text lines, its objects and check answers). Small enough for CI to evaluate on the CPU engines in well under a
minute; generated at test time rather than committed.

    .venv/bin/python scripts/make_evalset.py --out /tmp/evalset [--scenes 16] [--seed 10]

Scenes hold two to five labels at angles (rotation up to 35 degrees), in perspective, at 1.7-3.5 px per bar
module, under glare, blur and low light; symbologies Code128, QR, EAN-13, Code39 and DataMatrix; drawn pallets,
forklifts and people with their boxes. Needs the ``test`` extra (segno, python-barcode) and zxing-cpp (DataMatrix).

One file a little over the usual length, read top-down as the set is made: symbols, labels, the perspective
geometry, the drawn scene objects, the camera, then the close-ups, the scenes and the set.
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

from tests.images import font, linear_image, qr_image  # noqa: E402

TRUTH_FILE = "truth.json"
WALL, FLOOR = (122, 126, 132), (150, 148, 140)


# ---- symbols --------------------------------------------------------------------------------------------------
def matrix_image(fmt: str, value: str, module_px: int) -> Image.Image:
    if fmt == "QRCode":
        return qr_image(value, module_px=module_px)
    import zxingcpp

    sym = zxingcpp.create_barcode(value, zxingcpp.BarcodeFormat.DataMatrix)
    core = Image.fromarray(np.asarray(zxingcpp.write_barcode_to_image(sym, scale=1)))
    core = core.resize((core.width * module_px, core.height * module_px), Image.NEAREST)
    out = Image.new("L", (core.width + 4 * module_px, core.height + 4 * module_px), 255)
    out.paste(core, (2 * module_px, 2 * module_px))
    return out.convert("RGB")


def symbol_value(fmt: str, sku: str, rng: random.Random) -> str:
    """What a symbol of ``fmt`` on the label of ``sku`` encodes (EAN-13 carries its check digit)."""
    if fmt == "EAN13":
        import barcode

        return barcode.get("ean13", "40" + "".join(str(rng.randint(0, 9)) for _ in range(10))).get_fullcode()
    if fmt == "Code39":
        return sku.replace("WH-", "WH")
    if fmt == "QRCode":
        return f"https://wh.example/sku/{sku}"
    return sku  # Code128, DataMatrix


# ---- labels ---------------------------------------------------------------------------------------------------
def draw_label(sku: str, title: str, formats: list[str], rng: random.Random, module_px: int = 3
               ) -> tuple[Image.Image, list[dict], list[dict]]:
    """A white label: a title, ``SKU: <sku>`` and one symbol per format side by side. Returns the label and its
    barcodes and text lines, boxes in label pixels."""
    symbols = []
    for fmt in formats:
        value = symbol_value(fmt, sku, rng)
        if fmt in ("QRCode", "DataMatrix"):
            im = matrix_image(fmt, value, module_px + 1)
        else:
            options = {"add_checksum": False} if fmt == "Code39" else {}
            im = linear_image(fmt.lower(), value, module_px, 36 * module_px, **options)
        symbols.append((fmt, value, im))
    pad, gap = 24, 30
    width = max(560, pad * 2 + sum(s[2].width for s in symbols) + gap * (len(symbols) - 1))
    height = 150 + max(s[2].height for s in symbols) + pad
    label = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(label)
    d.rectangle([2, 2, width - 3, height - 3], outline=(30, 30, 30), width=3)
    title_font, sku_font = font(30), font(52)
    d.text((pad, 18), title, fill=(50, 50, 50), font=title_font)
    d.text((pad, 62), f"SKU: {sku}", fill="black", font=sku_font)
    texts = [{"text": title, "box": _text_box(d, (pad, 18), title, title_font)},
             {"text": f"SKU: {sku}", "box": _text_box(d, (pad, 62), f"SKU: {sku}", sku_font)}]
    barcodes, x = [], pad
    for fmt, value, im in symbols:
        y = 140
        label.paste(im, (x, y))
        barcodes.append({"format": fmt, "value": value, "box": [x, y, x + im.width, y + im.height]})
        x += im.width + gap
    return label, barcodes, texts


def _text_box(d: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, f: object) -> list[float]:
    return [float(v) for v in d.textbbox(xy, text, font=f)]


# ---- geometry -------------------------------------------------------------------------------------------------
def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking the four ``src`` points to ``dst``."""
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    h = np.linalg.solve(np.asarray(a, float), dst.reshape(-1).astype(float))
    return np.append(h, 1.0).reshape(3, 3)


def project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T  # [n, 3]
    return p[:, :2] / p[:, 2:]


def box_corners(box: list[float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], float)


def paste_warped(scene: Image.Image, label: Image.Image, quad: np.ndarray) -> np.ndarray:
    """Paste ``label`` so that its corners land on ``quad`` (tl, tr, br, bl in scene pixels); returns the map
    from label to scene pixels."""
    w, h = label.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    fwd = homography(src, quad)
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
    inv = homography(quad - [x0, y0], src)  # output (canvas) pixel -> label pixel, as PIL wants it
    coeffs = tuple((inv / inv[2, 2]).reshape(-1)[:8])
    size = (int(x1 - x0), int(y1 - y0))
    warped = label.transform(size, Image.PERSPECTIVE, coeffs, Image.BICUBIC)
    mask = Image.new("L", label.size, 255).transform(size, Image.PERSPECTIVE, coeffs, Image.BILINEAR)
    scene.paste(warped, (int(x0), int(y0)), mask)
    return fwd


def mapped_box(fwd: np.ndarray, box: list[float], size: tuple[int, int]) -> list[float]:
    p = project(fwd, box_corners(box))
    w, h = size
    return [round(float(np.clip(p[:, 0].min(), 0, w)), 1), round(float(np.clip(p[:, 1].min(), 0, h)), 1),
            round(float(np.clip(p[:, 0].max(), 0, w)), 1), round(float(np.clip(p[:, 1].max(), 0, h)), 1)]


# ---- scene objects --------------------------------------------------------------------------------------------
def pallet(d: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int, rng: random.Random) -> list[float]:
    """A wooden pallet (base at the bottom of the box) carrying cartons."""
    base = max(14, h // 8)
    d.rectangle([x, y + h - base, x + w, y + h - base // 2], fill=(150, 105, 60))
    for bx in range(x, x + w - 20, max(40, w // 5)):
        d.rectangle([bx, y + h - base // 2, bx + 24, y + h], fill=(118, 84, 44))
    rows, cols = 3, max(2, w // 110)
    cw, ch = w / cols, (h - base) / rows
    for r in range(rows):
        for c in range(cols):
            s = 160 + rng.randint(-18, 18)
            d.rectangle([x + c * cw + 3, y + r * ch + 3, x + (c + 1) * cw - 3, y + (r + 1) * ch - 3],
                        fill=(s, s - 45, s - 95), outline=(105, 76, 48), width=2)
    return [float(x), float(y), float(x + w), float(y + h)]


def forklift(d: ImageDraw.ImageDraw, x: int, y: int, s: float) -> list[float]:
    """A forklift facing right; ``(x, y)`` is the top-left of its box, ``s`` its scale."""
    def r(a: float, b: float, c: float, e: float, **kw: object) -> None:
        d.rectangle([x + a * s, y + b * s, x + c * s, y + e * s], **kw)

    r(0, 200, 170, 320, fill=(230, 170, 20))
    r(20, 90, 130, 200, outline=(40, 40, 40), width=max(2, int(8 * s)))
    r(170, 0, 185, 320, fill=(70, 70, 70))
    r(185, 300, 300, 312, fill=(70, 70, 70))
    for wx in (15, 115):
        d.ellipse([x + wx * s, y + 295 * s, x + (wx + 55) * s, y + 350 * s], fill=(25, 25, 25))
    return [float(x), float(y), float(x + 300 * s), float(y + 350 * s)]


def person(d: ImageDraw.ImageDraw, x: int, y: int, s: float, rng: random.Random) -> list[float]:
    """A standing person in a hi-vis vest; box from head to feet."""
    skin = rng.choice([(224, 172, 105), (141, 85, 36), (198, 134, 66), (255, 219, 172)])
    d.ellipse([x + 22 * s, y, x + 58 * s, y + 38 * s], fill=skin)
    d.rectangle([x + 10 * s, y + 40 * s, x + 70 * s, y + 130 * s], fill=(250, 120, 20))  # vest
    d.rectangle([x + 10 * s, y + 85 * s, x + 70 * s, y + 95 * s], fill=(220, 220, 220))  # reflective band
    d.rectangle([x, y + 44 * s, x + 10 * s, y + 120 * s], fill=(40, 50, 90))  # arms
    d.rectangle([x + 70 * s, y + 44 * s, x + 80 * s, y + 120 * s], fill=(40, 50, 90))
    d.rectangle([x + 14 * s, y + 130 * s, x + 38 * s, y + 220 * s], fill=(35, 40, 60))  # legs
    d.rectangle([x + 42 * s, y + 130 * s, x + 66 * s, y + 220 * s], fill=(35, 40, 60))
    return [float(x), float(y), float(x + 80 * s), float(y + 220 * s)]


# ---- camera ---------------------------------------------------------------------------------------------------
def camera(im: Image.Image, rng: np.random.Generator, blur: float, gain: float, noise: float,
           glare: tuple[float, float, float] | None) -> Image.Image:
    """Lens blur, a glare spot (centre x, y, radius), exposure ``gain`` and sensor noise."""
    im = im.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(im).astype(np.float32)  # [H, W, 3]
    if glare is not None:
        gx, gy, gr = glare
        yy, xx = np.mgrid[0:im.height, 0:im.width]
        a += 120.0 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * gr ** 2))[..., None]
    a = a * gain + rng.normal(0, noise, (im.height, im.width, 1))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def sku_for(rng: random.Random) -> str:
    return f"WH-{rng.randint(10000, 99999)}"


TITLES = ("Aisle {a}  Bay {b}", "Inbound  Dock {a}", "Cold store  C{a}", "Rack {a}-{b}")


def title_for(rng: random.Random) -> str:
    return rng.choice(TITLES).format(a=rng.randint(1, 9), b=rng.randint(10, 40))


def close_up(seed: int, formats: list[str], rotate: float = 0.0, invert: bool = False) -> tuple[Image.Image, dict]:
    """A shelf label photographed head-on (optionally turned by ``rotate`` degrees, or printed inverted)."""
    rng = random.Random(seed)
    sku = sku_for(rng)
    label, barcodes, texts = draw_label(sku, title_for(rng), formats, rng)
    if invert:
        label = Image.eval(label, lambda v: 255 - v)
    w, h = label.size
    margin = 40
    scene = Image.new("RGB", (w + 2 * margin, h + 2 * margin), (96, 100, 108))
    cx, cy = scene.width / 2, scene.height / 2
    t = np.radians(rotate)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    quad = (np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) @ rot.T) + [cx, cy]
    if rotate:  # grow the canvas so the turned label fits
        off = np.maximum(0, margin - quad.min(axis=0))
        quad = quad + off
        size = np.ceil(quad.max(axis=0) + margin).astype(int)
        scene = Image.new("RGB", (int(size[0]), int(size[1])), (96, 100, 108))
    fwd = paste_warped(scene, label, quad)
    im = camera(scene, np.random.default_rng(seed), blur=0.5, gain=1.0, noise=2.0, glare=None)
    truth = {"barcodes": [b | {"box": mapped_box(fwd, b["box"], im.size)} for b in barcodes],
             "text_lines": [t | {"box": mapped_box(fwd, t["box"], im.size)} for t in texts],
             "objects": [], "checks": {"forklift-in-view": "no", "people-count": 0}}
    return im, truth


SCENE_FORMATS = (["Code128"], ["Code128", "QRCode"], ["EAN13"], ["Code39"], ["Code128", "DataMatrix"],
                 ["QRCode"], ["Code128"], ["EAN13", "QRCode"])


def scene(seed: int) -> tuple[Image.Image, dict]:
    """A camera view of a warehouse floor: racking, pallets carrying labels, a forklift, people; two to five
    labels at angles and in perspective; some glare, blur, low light."""
    rng = random.Random(seed)
    w, h = rng.choice([(1280, 800), (1440, 900), (1600, 1000)])
    im = Image.new("RGB", (w, h), WALL)
    d = ImageDraw.Draw(im)
    horizon = int(h * 0.55)
    d.polygon([(0, horizon), (w, horizon), (w, h), (0, h)], fill=FLOOR)
    for x in range(40, w, 420):  # racking uprights and a beam
        d.rectangle([x, 30, x + 16, horizon], fill=(30, 80, 170))
    d.rectangle([0, horizon - 170, w, horizon - 156], fill=(240, 120, 20))
    objects: list[dict] = []
    n_slots = int(w * 0.72) // 330
    slots = sorted(rng.sample(range(n_slots), rng.randint(1, n_slots)))
    pallet_boxes = []
    for slot in slots:
        pw, ph = rng.randint(260, 320), rng.randint(240, 320)
        px, py = 30 + slot * 330 + rng.randint(0, 20), horizon - ph // 2 + rng.randint(20, 80)
        box = pallet(d, px, py, pw, ph, rng)
        pallet_boxes.append(box)
        objects.append({"label": "pallet", "box": box})
    if rng.random() < 0.7:
        s = rng.uniform(0.5, 0.8)
        fx = rng.randint(int(w * 0.72), int(w - 300 * s - 10))
        objects.append({"label": "forklift", "box": forklift(d, fx, h - int(360 * s) - rng.randint(5, 60), s)})
    for _ in range(rng.randint(0, 2)):
        s = rng.uniform(0.9, 1.4)
        px = rng.randint(20, w - int(90 * s))
        objects.append({"label": "person", "box": person(d, px, h - int(230 * s) - rng.randint(0, 40), s, rng)})
    # labels: on the pallets first, then anywhere above the floor; never over each other, a person or a forklift
    n_labels = rng.randint(2, 5)
    anchors = [((b[0] + b[2]) / 2, b[1] + (b[3] - b[1]) * 0.35) for b in pallet_boxes]
    blocked = [tuple(o["box"]) for o in objects if o["label"] != "pallet"]
    barcodes, texts, placed = [], [], []
    for _ in range(n_labels):
        formats = list(rng.choice(SCENE_FORMATS))
        label, bcs, tls = draw_label(sku_for(rng), title_for(rng), formats, rng)
        scale = rng.uniform(1.6, 2.8) / 3  # pixels per bar module in the scene; labels are drawn at 3
        lw, lh = label.width * scale, label.height * scale
        for _ in range(12):  # positions until one is free
            ax, ay = anchors.pop(0) if anchors else (rng.uniform(w * 0.08, w * 0.92), rng.uniform(h * 0.12, h * 0.62))
            angle = np.radians(rng.uniform(-35, 35))
            squeeze = rng.uniform(0.75, 1.0)  # perspective: one side shorter
            left, right = (1.0, squeeze) if rng.random() < 0.5 else (squeeze, 1.0)
            half = np.array([[-lw / 2, -lh / 2 * left], [lw / 2, -lh / 2 * right], [lw / 2, lh / 2 * right],
                             [-lw / 2, lh / 2 * left]])
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            quad = half @ rot.T + [ax, ay]
            lo, hi = quad.min(axis=0), quad.max(axis=0)
            quad = quad + np.maximum(0, 8 - lo) - np.maximum(0, hi - [w - 8, h - 8])
            lo, hi = quad.min(axis=0), quad.max(axis=0)
            if not any(lo[0] < p[2] and p[0] < hi[0] and lo[1] < p[3] and p[1] < hi[1] for p in placed + blocked):
                break
        else:
            continue  # no free place for this label
        placed.append((*lo, *hi))
        fwd = paste_warped(im, label, quad)
        barcodes += [b | {"box": mapped_box(fwd, b["box"], (w, h))} for b in bcs]
        texts += [t | {"box": mapped_box(fwd, t["box"], (w, h))} for t in tls]
    dark = rng.random() < 0.35
    glare = (rng.uniform(0, w), rng.uniform(0, h * 0.6), rng.uniform(80, 200)) if rng.random() < 0.4 else None
    out = camera(im, np.random.default_rng(seed), blur=rng.uniform(0.4, 1.0), gain=rng.uniform(0.35, 0.55) if dark
                 else rng.uniform(0.9, 1.05), noise=rng.uniform(4, 7) if dark else rng.uniform(2, 4), glare=glare)
    labels = [o["label"] for o in objects]
    truth = {"barcodes": barcodes, "text_lines": texts, "objects": objects,
             "checks": {"forklift-in-view": "yes" if "forklift" in labels else "no",
                        "people-count": labels.count("person")}}
    return out, truth


CLOSE_UPS = (  # (formats, rotate, invert)
    (["Code128", "QRCode"], 0.0, False),
    (["EAN13"], 0.0, False),
    (["Code39", "DataMatrix"], 0.0, False),
    (["Code128"], 90.0, False),
    (["QRCode"], 0.0, True),
    (["Code128", "DataMatrix"], 12.0, False),
)


def build(out: Path, scenes: int = 16, seed: int = 10) -> dict:
    """Write the images and truth.json into ``out``; returns the truth document."""
    out.mkdir(parents=True, exist_ok=True)
    items: list[tuple[str, Image.Image, dict]] = []
    for i, (formats, rotate, invert) in enumerate(CLOSE_UPS):
        im, truth = close_up(seed * 1000 + i, formats, rotate, invert)
        items.append((f"label_{i:02d}.png", im, truth))
    for i in range(scenes):
        im, truth = scene(seed * 1000 + 100 + i)
        items.append((f"scene_{i:02d}.jpg", im, truth))
    images = []
    for name, im, truth in items:
        if name.endswith(".png"):
            im.save(out / name, format="PNG", compress_level=1)
        else:
            im.save(out / name, format="JPEG", quality=85, optimize=True)
        images.append({"file_name": name, "width": im.width, "height": im.height, **truth})
    doc = {"vlwatch_truth": 1, "name": f"vlwatch-generated-seed{seed}", "images": images,
           "checks": {"forklift-in-view": {"kind": "yes_no"}, "people-count": {"kind": "number"}}}
    (out / TRUTH_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--seed", type=int, default=10)
    args = ap.parse_args(argv)
    doc = build(args.out, args.scenes, args.seed)
    total = sum((args.out / i["file_name"]).stat().st_size for i in doc["images"])
    codes = sum(len(i["barcodes"]) for i in doc["images"])
    print(f"wrote {len(doc['images'])} images ({total / 1e6:.2f} MB, {codes} barcodes) and {TRUTH_FILE} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
