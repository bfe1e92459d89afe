"""Checking that bytes are an image, and naming its real format.

Only the header is parsed (Pillow's lazy open): cheap enough to run on every download in the
event loop. The original bytes are kept; only formats a loader cannot read are converted.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from flowdc.status import NOT_AN_IMAGE, TOO_LARGE

# Pillow format -> file extension. MPO is a JPEG with extra frames: its bytes are a JPEG.
_EXTENSION = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "PPM": "ppm",
    "ICO": "ico",
    "JPEG2000": "jp2",
}
# What torchvision's ImageFolder reads (its IMG_EXTENSIONS); others are converted to PNG there.
TORCHVISION_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"}
)


class ImageRejected(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    extension: str
    width: int
    height: int
    mode: str


@dataclass
class Header:
    """An image opened lazily (nothing decoded yet) and what its header says."""

    image: Image.Image
    format: str
    extension: str
    width: int
    height: int
    mode: str

    @property
    def orientation(self) -> int | None:
        """The EXIF orientation tag (1-8), or None; never decodes pixels."""
        if self.format == "PNG" and "exif" not in self.image.info:
            return None  # Pillow would decode the whole PNG to look for a late eXIf chunk
        try:
            value = self.image.getexif().get(0x0112)
        except Exception:  # a broken EXIF block is no orientation
            return None
        return value if isinstance(value, int) and 1 <= value <= 8 else None


def inspect_header(data: bytes, max_pixels: int = Image.MAX_IMAGE_PIXELS or 0) -> Header:
    """Open `data` lazily and check it, or raise ImageRejected with the failure's class.

    An image of more than `max_pixels` (width x height, from its header) is refused before any
    pixel is decoded: a decompression bomb costs only its header parse.
    """
    if not data:
        raise ImageRejected(NOT_AN_IMAGE, "empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        fmt = image.format or "UNKNOWN"
        mode = image.mode
    except Image.DecompressionBombError as exc:
        raise ImageRejected(TOO_LARGE, f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected(NOT_AN_IMAGE, f"not an image ({_sniff(data)})") from None
    except Exception as exc:  # Pillow raises many kinds on broken headers
        raise ImageRejected(
            NOT_AN_IMAGE, f"unreadable image: {type(exc).__name__}: {exc}"
        ) from None
    try:
        if width <= 0 or height <= 0:
            raise ImageRejected(NOT_AN_IMAGE, f"image has no pixels ({width}x{height})")
        if max_pixels and width * height > max_pixels:
            raise ImageRejected(
                TOO_LARGE,
                f"image too large: {width}x{height} = {width * height:,} pixels is over "
                f"max_image_area {max_pixels:,} (not decoded)",
            )
        if _is_cut_short(fmt, data):
            raise ImageRejected(NOT_AN_IMAGE, f"truncated {fmt} image (no end marker)")
    except ImageRejected:
        image.close()
        raise
    return Header(image, fmt, _EXTENSION.get(fmt, fmt.lower()), width, height, mode)


def inspect_image(data: bytes) -> ImageInfo:
    """Identify the image in `data` or raise ImageRejected with the failure's class."""
    header = inspect_header(data)
    header.image.close()
    return ImageInfo(header.format, header.extension, header.width, header.height, header.mode)


def _is_cut_short(fmt: str, data: bytes) -> bool:
    """A file cut short loads nowhere; a header parse alone does not see it.

    JPEG: an end-of-image marker must follow the start of scan (entropy-coded data escapes 0xFF,
    so one found later is real; data after it, such as a motion photo's video, is fine).
    PNG: an IEND chunk must follow the last IDAT. BMP: the size in the header must fit.
    """
    if fmt in ("JPEG", "MPO"):
        return data.rfind(b"\xff\xd9") < data.find(b"\xff\xda")
    if fmt == "PNG":
        return data.rfind(b"IEND") < data.rfind(b"IDAT")
    if fmt == "BMP" and len(data) >= 6:
        return int.from_bytes(data[2:6], "little") > len(data)
    return False


def to_png(data: bytes) -> bytes:
    """The first frame as PNG, for formats a loader cannot read (GIF, ICO, ... in ImageFolder)."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        frame = image.convert(
            "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
        )
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    return buffer.getvalue()


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith((b"{", b"[")):
        return "JSON"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "XML or SVG"
    return f"{len(data)} bytes starting {data[:8]!r}"
