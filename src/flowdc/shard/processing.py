"""What happens to a downloaded body before it is stored: checks, resizing, encoding, dedupe.

img2dataset's options and meanings. The original bytes are stored untouched unless something
asks for a change (a resize that changes the size, an EXIF rotation to apply when the pixels are
decoded anyway, another format). Decoding, resizing and encoding run in a thread pool: Pillow
releases the GIL while it works, so the event loop keeps downloading meanwhile. Everything that
only needs the header (size, format, EXIF orientation) is read before any pixel is decoded, so a
decompression bomb is refused on its header.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import ImageRejected
from flowdc.core.images import TORCHVISION_EXTENSIONS, inspect_header, is_plain_jpeg, to_png
from flowdc.core.layout import DEDUPE_FILE, shard_name
from flowdc.core.status import BAD_ASPECT_RATIO, DUPLICATE, HASH_MISMATCH, NOT_AN_IMAGE, TOO_SMALL

_ENCODABLE = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# EXIF orientations 5-8 swap width and height
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Options:
    """The processing part of a DownloadConfig, small enough to hand to a thread."""

    resize_mode: str = "no"
    image_size: int = 256
    resize_only_if_bigger: bool = False
    encode_format: str | None = None
    encode_quality: int | None = None
    min_image_size: int = 0
    max_aspect_ratio: float = float("inf")
    max_image_area: int = 89_478_485
    imagefolder: bool = False

    @property
    def transforms(self) -> bool:
        """Whether every image's pixels may be decoded: a resize or a new encoding."""
        return self.resize_mode != "no" or self.encode_format is not None

    def may_decode(self, data: bytes) -> bool:
        """Whether this body's pixels may be decoded: a resize, a new encoding, or (ImageFolder)
        a format loaders cannot read; a plain JPEG never needs that conversion."""
        return self.transforms or (self.imagefolder and not is_plain_jpeg(data))

    @classmethod
    def from_config(cls, config: DownloadConfig, imagefolder: bool) -> Options:
        return cls(
            resize_mode=config.resize_mode,
            image_size=config.image_size,
            resize_only_if_bigger=config.resize_only_if_bigger,
            encode_format=config.encode_format,
            encode_quality=config.encode_quality,
            min_image_size=config.min_image_size,
            max_aspect_ratio=config.max_aspect_ratio,
            max_image_area=config.max_image_area,
            imagefolder=imagefolder,
        )


@dataclass
class Processed:
    """What to store: `data` (the original bytes or a new encoding) and the facts about it."""

    data: bytes
    extension: str
    width: int
    height: int
    sha256: str  # of the original bytes
    original_bytes: int
    original_width: int
    original_height: int


def target_size(width: int, height: int, options: Options) -> tuple[int, int]:
    """The size the resize mode gives an image of (width, height), as img2dataset does."""
    mode, size = options.resize_mode, options.image_size
    if mode == "no":
        return width, height
    if mode in ("keep_ratio", "center_crop"):
        if options.resize_only_if_bigger and min(width, height) <= size:
            return width, height
        if mode == "center_crop":
            return size, size
        scale = size / min(width, height)
    else:  # keep_ratio_largest, border
        if options.resize_only_if_bigger and max(width, height) <= size:
            return width, height
        if mode == "border":
            return size, size
        scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def process_image(data: bytes, options: Options, expected_sha256: str | None = None) -> Processed:
    """Check, and when asked transform, one body; raise ImageRejected with the status."""
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and expected_sha256.strip().lower() != digest:
        raise ImageRejected(
            HASH_MISMATCH, f"sha256 {digest} differs from the expected {expected_sha256.strip()}"
        )
    header = inspect_header(data, options.max_image_area)
    _check_shape(header.width, header.height, options)
    orientation = header.orientation if options.transforms else None
    width, height = header.width, header.height
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    target = target_size(width, height, options)
    encode = options.encode_format or _ENCODABLE.get(header.format, "png")
    changed = (
        target != (width, height)
        or (options.resize_mode != "no" and orientation not in (None, 1))
        or (options.encode_format is not None and _ENCODABLE.get(header.format) != encode)
    )
    try:
        if not changed:
            extension, out = header.extension, data
            if options.imagefolder and extension not in TORCHVISION_EXTENSIONS:
                out, extension = to_png(data), "png"
            width, height = header.width, header.height
        else:
            out = _transform(header.image, target, orientation, options, encode)
            extension, (width, height) = encode, target
    except ImageRejected:
        raise
    except Exception as exc:  # a body whose header parsed but whose pixels do not
        raise ImageRejected(
            NOT_AN_IMAGE, f"cannot decode image: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        header.close()
    return Processed(
        data=out,
        extension=extension,
        width=width,
        height=height,
        sha256=digest,
        original_bytes=len(data),
        original_width=header.width,
        original_height=header.height,
    )


def _check_shape(width: int, height: int, options: Options) -> None:
    if min(width, height) < options.min_image_size:
        raise ImageRejected(
            TOO_SMALL,
            f"image {width}x{height} is smaller than min_image_size {options.min_image_size}",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > options.max_aspect_ratio:
        raise ImageRejected(
            BAD_ASPECT_RATIO,
            f"aspect ratio {ratio:.2f} of {width}x{height} is over max_aspect_ratio "
            f"{options.max_aspect_ratio:g}",
        )


def _transform(
    image: Image.Image,
    target: tuple[int, int],
    orientation: int | None,
    options: Options,
    encode: str,
) -> bytes:
    """Decode (at reduced scale when the resize allows), orient, convert, resize, encode."""
    image.seek(0)  # the first frame of an animation
    if image.format in ("JPEG", "MPO"):
        # DCT scaling decodes at 1/2, 1/4 or 1/8 when the result still covers the target
        need = _decode_size(image, target, orientation, options)
        image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else None, need)
    image = _working_mode(image)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
    image = _resize(image, target, options)
    return _encode(image, encode, options.encode_quality)


def _decode_size(
    image: Image.Image, target: tuple[int, int], orientation: int | None, options: Options
) -> tuple[int, int]:
    """The smallest stored-orientation size draft may decode to without losing the target."""
    width, height = target
    if options.resize_mode == "border" and target == (options.image_size,) * 2:
        scale = options.image_size / max(image.size)  # the picture inside the border
        width, height = max(1, int(image.width * scale)), max(1, int(image.height * scale))
        return width, height  # the scale needs no turning
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return width, height


def _working_mode(image: Image.Image) -> Image.Image:
    """Every colour mode to L, RGB or RGBA (16-bit scaled to 8, CMYK and palettes converted)."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image.mode in _SIXTEEN_BIT:
        grey = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
        return grey
    if image.mode in _GREY_MODES and not has_alpha:
        return image.convert("L")
    if has_alpha:
        return image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _filter(source: tuple[int, int], target: tuple[int, int]) -> Image.Resampling:
    """img2dataset's choice: area averaging to shrink (BOX), Lanczos to enlarge; BOX is also
    three times faster than Lanczos here, and the resize is most of a resized sample's CPU."""
    shrinking = target[0] * target[1] < source[0] * source[1]
    return Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS


def _resize(image: Image.Image, target: tuple[int, int], options: Options) -> Image.Image:
    width, height = image.size
    mode, size = options.resize_mode, options.image_size
    if mode == "center_crop" and target == (size, size) and (width, height) != target:
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        return image.resize(target, _filter((side, side), target), box=box)
    if mode == "border" and target == (size, size):
        scale = size / max(width, height)
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        if inner != image.size:
            image = image.resize(inner, _filter(image.size, inner))
        fill: Any = _WHITE + ((255,) if image.mode == "RGBA" else ())
        if image.mode == "L":
            fill = 255
        canvas = Image.new(image.mode, target, fill)
        canvas.paste(image, ((size - inner[0]) // 2, (size - inner[1]) // 2))
        return canvas
    if image.size != target:
        return image.resize(target, _filter(image.size, target))
    return image


def _encode(image: Image.Image, encode: str, quality: int | None) -> bytes:
    buffer = io.BytesIO()
    if encode == "jpg":
        if image.mode == "RGBA":  # JPEG has no alpha: flatten on white
            flat = Image.new("RGB", image.size, _WHITE)
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.save(buffer, "JPEG", quality=95 if quality is None else quality)
    elif encode == "webp":
        image = image.convert("RGB") if image.mode == "L" else image
        image.save(buffer, "WEBP", quality=95 if quality is None else quality)
    else:
        image.save(buffer, "PNG", compress_level=6 if quality is None else quality)
    return buffer.getvalue()


_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    """One pool per process, shared by its shards (threads = cores: Pillow frees the GIL)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="flowdc-image")
    return _pool


def _set_up(db: sqlite3.Connection, seconds: float = 120) -> None:
    """WAL mode and the table. Processes starting at once on a new file race for the switch to
    WAL, and SQLite answers "database is locked" at once there instead of waiting its busy
    timeout (a shard failed so in CI); so the loser waits and tries again."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS claims (sha256 TEXT PRIMARY KEY, key TEXT NOT NULL)"
            )
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class DedupeIndex:
    """sha256 -> the key stored first, shared by every process and run writing one output.

    A SQLite table in one file at the output's root (a folder there would be a class to
    torchvision). A claim naming a key of this shard that this run did not make was left by a
    killed run of the shard (which runs again from scratch), so it is taken over.
    """

    def __init__(self, output: Path, shard: int) -> None:
        self.db = sqlite3.connect(output / DEDUPE_FILE, timeout=120, isolation_level=None)
        _set_up(self.db)
        self.shard_prefix = shard_name(shard)
        self.mine: set[str] = set()

    def _held(self, digest: str) -> str | None:
        row = self.db.execute("SELECT key FROM claims WHERE sha256 = ?", (digest,)).fetchone()
        return None if row is None else row[0]

    def claim(self, digest: str, key: str) -> str | None:
        """Claim the content for `key`; return the owner's key when another holds it."""
        held = self._held(digest)
        if held is None:
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO claims VALUES (?, ?)", (digest, key)
            ).rowcount
            if inserted:
                self.mine.add(digest)
                return None
            return self._held(digest)  # another process claimed it a moment ago
        if digest in self.mine or not held.startswith(self.shard_prefix):
            return held
        self.db.execute("UPDATE claims SET key = ? WHERE sha256 = ?", (key, digest))
        self.mine.add(digest)
        return None

    def close(self) -> None:
        self.db.close()


class ImageProcessor:
    """Runs `process_image` for one shard (off the event loop when it may decode pixels), plus
    hash checks and dedupe."""

    def __init__(self, config: DownloadConfig, output: Path, shard: int, imagefolder: bool):
        self.options = Options.from_config(config, imagefolder)
        self.dedupe = DedupeIndex(output, shard) if config.dedupe else None

    async def process(self, data: bytes, key: str, expected_sha256: str | None) -> Processed:
        """The sample to store, or ImageRejected (its status says why; DUPLICATE names the key
        holding the same bytes in `message`)."""
        if not self.options.may_decode(data):
            # a header parse and a hash: a thread hand-off costs more than it saves (measured:
            # 12% of images/s on loopback)
            processed = process_image(data, self.options, expected_sha256)
        else:
            loop = asyncio.get_running_loop()
            processed = await loop.run_in_executor(
                _thread_pool(), process_image, data, self.options, expected_sha256
            )
        if self.dedupe is not None:
            owner = self.dedupe.claim(processed.sha256, key)
            if owner is not None:
                raise Duplicate(owner, processed)
        return processed

    def close(self) -> None:
        if self.dedupe is not None:
            self.dedupe.close()


class Duplicate(ImageRejected):
    """The bytes were stored already under `owner`."""

    def __init__(self, owner: str, processed: Processed) -> None:
        super().__init__(DUPLICATE, f"same bytes as {owner}")
        self.owner = owner
        self.processed = processed
