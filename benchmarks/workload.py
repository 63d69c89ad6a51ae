"""Offline stand-ins with the article's sizes: photo-like JPEGs and a MobileNetV2 with random weights.

Decoding speed depends on pixel count and entropy, and backbone speed on architecture, not on what the
images show or what the weights are, so these time like cats_vs_dogs and the TF Hub module would.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# cats_vs_dogs photos are at most 500 pixels on the long side, mostly 4:3 in either orientation.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (320, 240), (400, 300))
CLASSES = ("cats", "dogs")


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields, a few blurred shapes and sensor-like noise: ~25 KB as a quality-85 JPEG,
    close to cats_vs_dogs' average file size (~800 MB / 25,000 images)."""
    small = rng.integers(0, 256, size=(max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(10, min(width, height) // 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    noisy = np.asarray(img).astype(np.int16) + rng.normal(0, 4, size=(height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_photo_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/cats/*.jpg and root/dogs/*.jpg; reused when a previous run wrote the same set."""
    stamp = root / ".complete.json"
    spec = {"per_class": per_class, "seed": seed, "sizes": PHOTO_SIZES}
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(spec)):
        return root
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jpg"):
            old.unlink()
        for i in range(per_class):
            w, h = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
            (folder / f"{name}_{i:05d}.jpg").write_bytes(jpeg_bytes(photo_like(rng, w, h)))
    stamp.write_text(json.dumps(spec))
    return root


# Bumped when the stand-in's saved form changes, so a work folder's older one is made again.
# 2: only the module's function and variables are saved, not the Keras model's layers (0.5 s to load, not 4).
# 3: batch normalisation statistics from a batch of noise, so that a head on its features can learn.
BACKBONE_FORMAT = 3


def make_backbone(path: Path, image_size: int = 224) -> Path:
    """The MobileNetV2 stand-in, saved once per work folder (into a temporary folder, then renamed, so
    an interrupted save is never mistaken for a finished one)."""
    import os
    import shutil

    from core.data.demo import make_mobilenet_backbone

    spec = {"format": BACKBONE_FORMAT, "image_size": image_size}
    stamp = path / "standin.json"
    if (path / "saved_model.pb").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_mobilenet_backbone(tmp, image_size)
    (tmp / stamp.name).write_text(json.dumps(spec))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
