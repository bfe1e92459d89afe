"""The wild bed's images: photo-like JPEGs, made once per seed and cached outside the repository.

Each image is a 1/f ("pink") field, the spectrum of natural scenes, in a luminance and two weaker
chroma channels, with a few dozen soft-edged shapes over it (occluding objects: the edges a photo
has) and little noise. Sizes are 0.5 to 12 megapixels (log-normal, median about 2), encoded at a
JPEG quality found per image so that bytes grow with pixels and the pool's mean is near 353 KB
(the mean of a real GBIF-like list). The servers hold the pool once and serve it by reference.

The cache is $FLOWDC_WILD_CACHE, else ~/.cache/flowdc-wild: <folder>/pool-s<seed>-n<count>-v1/
holds N.jpg and sizes.json.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np

VERSION = 1
MEAN_BYTES = 353_000


def cache_root() -> Path:
    return Path(os.environ.get("FLOWDC_WILD_CACHE", Path.home() / ".cache" / "flowdc-wild"))


def _pink(rng: np.random.Generator, h: int, w: int, slope: float) -> np.ndarray:
    """A field with amplitude spectrum 1/f**slope, scaled to zero mean and unit deviation."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**slope
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(h, w))
    return (field - field.mean()) / (field.std() + 1e-9)


def photo(rng: np.random.Generator, width: int, height: int):
    """One photo-like RGB image (a PIL Image) of width x height."""
    from PIL import Image, ImageDraw, ImageFilter

    # the field is made at a quarter of the pixels and enlarged: photos are soft at pixel level
    h, w = max(16, height // 2), max(16, width // 2)
    slope = rng.uniform(1.0, 1.3)
    luma = _pink(rng, h, w, slope)
    chroma = [_pink(rng, h, w, slope + 0.2) for _ in range(2)]
    base = rng.uniform(70, 170, size=3)
    tint = rng.normal(0, 1, size=(3, 2)) * 6
    rgb = np.stack(
        [base[c] + 38 * luma + tint[c, 0] * chroma[0] + tint[c, 1] * chroma[1] for c in range(3)],
        axis=-1,
    )
    # objects: shapes filled with textures of their own (other pink fields, other colours)
    textures = [_pink(rng, h, w, rng.uniform(0.9, 1.4)) for _ in range(3)]
    for _ in range(int(rng.integers(6, 18))):
        mask_image = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_image)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.35) * min(w, h)
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r), fill=255)
        else:
            corners = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(3, 7))))
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners], fill=255)
        mask = np.asarray(mask_image.filter(ImageFilter.GaussianBlur(1.0)), np.float32)[..., None]
        texture = textures[int(rng.integers(len(textures)))]
        colour = rng.uniform(30, 220, size=3) * 0.6 + base * 0.4
        layer = colour[None, None, :] + rng.uniform(10, 45) * texture[..., None]
        rgb = rgb * (1 - mask / 255) + layer * (mask / 255)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 1.5, size=(height, width, 1))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _encode(image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _encode_near(image, target: int) -> bytes:
    """The JPEG whose size is nearest `target`, by bisection of the quality (30-95)."""
    low, high = 30, 95
    best = _encode(image, 75)
    while low <= high:
        quality = (low + high) // 2
        data = _encode(image, quality)
        if abs(len(data) - target) < abs(len(best) - target):
            best = data
        if len(data) < target:
            low = quality + 1
        else:
            high = quality - 1
    return best


def megapixels(rng: np.random.Generator) -> float:
    return float(np.clip(rng.lognormal(math.log(2.0), 0.8), 0.5, 12.0))


def make_pool(count: int, seed: int, folder: Path | None = None) -> tuple[Path, list[int]]:
    """The pool's folder (N.jpg for N < count) and each image's size in bytes; made on first use."""
    folder = folder or cache_root() / f"pool-s{seed}-n{count}-v{VERSION}"
    sizes_file = folder / "sizes.json"
    if sizes_file.exists():
        return folder, json.loads(sizes_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(count):
        mp = megapixels(rng)
        aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3, 16 / 9])
        width = int(math.sqrt(mp * 1e6 * aspect))
        shapes.append((width, int(mp * 1e6 / width)))
    pixels = sum(w * h for w, h in shapes)
    bytes_per_pixel = MEAN_BYTES * count / pixels  # sizes grow with pixels; the mean is the target
    sizes = []
    for index, (width, height) in enumerate(shapes):
        data = _encode_near(photo(rng, width, height), int(width * height * bytes_per_pixel))
        (folder / f"{index}.jpg").write_bytes(data)
        sizes.append(len(data))
    sizes_file.write_text(json.dumps(sizes))
    return folder, sizes


def small_pool(count: int, seed: int, folder: Path) -> tuple[Path, list[int]]:
    """A pool of small photo-like images (0.02-0.2 MP) for the test suite's quick bed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = []
    for index in range(count):
        width = int(rng.integers(160, 520))
        height = int(width * rng.uniform(0.6, 1.0))
        data = _encode(photo(rng, width, height), 85)
        (folder / f"{index}.jpg").write_bytes(data)
        sizes.append(len(data))
    return folder, sizes


if __name__ == "__main__":
    import sys
    import time

    started = time.monotonic()
    where, made = make_pool(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
    print(
        where,
        len(made),
        f"mean {np.mean(made) / 1e3:.0f} KB",
        f"{time.monotonic() - started:.1f} s",
    )
