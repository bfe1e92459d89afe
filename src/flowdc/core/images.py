"""Checking that bytes are an image, and naming its real format.

Only the header is parsed: cheap enough to run on every download in the event loop. A plain
JPEG's size is read from its start-of-frame by walking its markers (a few microseconds; Pillow's
lazy open parses every table in Python, about 60 us, a twentieth of an image's CPU when nothing
else is done to it); anything else, or anything unusual in a JPEG, goes to Pillow. Pillow opens
the image only when its pixels or EXIF are wanted. The original bytes are kept; only formats a
loader cannot read are converted.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from flowdc.core.errors import ImageRejected
from flowdc.core.status import NOT_AN_IMAGE, TOO_LARGE

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


@dataclass(frozen=True)
class ImageInfo:
    format: str
    extension: str
    width: int
    height: int
    mode: str


@dataclass
class Header:
    """What an image's header says; `image` opens it with Pillow (nothing decoded yet)."""

    data: bytes
    format: str
    extension: str
    width: int
    height: int
    mode: str
    _image: Image.Image | None = None

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = open_quietly(self.data)
        return self._image

    def close(self) -> None:
        if self._image is not None:
            self._image.close()

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
    frame = _jpeg_frame(data)
    if frame is not None:
        width, height, mode = frame
        _check_area(width, height, max_pixels)
        if _is_cut_short("JPEG", data):
            raise ImageRejected(NOT_AN_IMAGE, "truncated JPEG image (no end marker)")
        return Header(data, "JPEG", "jpg", width, height, mode)
    return _pillow_header(data, max_pixels)


def _pillow_header(data: bytes, max_pixels: int) -> Header:
    try:
        image = open_quietly(data)
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
        _check_area(width, height, max_pixels)
        if _is_cut_short(fmt, data):
            raise ImageRejected(NOT_AN_IMAGE, f"truncated {fmt} image (no end marker)")
    except ImageRejected:
        image.close()
        raise
    return Header(data, fmt, _EXTENSION.get(fmt, fmt.lower()), width, height, mode, image)


def open_quietly(data: bytes) -> Image.Image:
    """Pillow's lazy open, without its DecompressionBombWarning: max_image_area is the limit
    here, checked on the header (catch_warnings costs more than the open of a small header,
    so it is not set around every image)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _check_area(width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageRejected(
            TOO_LARGE,
            f"image too large: {width}x{height} = {width * height:,} pixels is over "
            f"max_image_area {max_pixels:,} (not decoded)",
        )
    bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # where Pillow's open refuses, whatever the option
    if bomb and width * height > bomb:
        raise ImageRejected(
            TOO_LARGE,
            f"image too large: {width}x{height} = {width * height:,} pixels is over Pillow's "
            f"decompression bomb limit of {bomb:,} pixels (not decoded)",
        )


# start-of-frame markers (not DHT C4, JPG C8, DAC CC); Pillow's modes by component count
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def is_plain_jpeg(data: bytes) -> bool:
    """A JPEG whose header holds nothing unusual (what every loader reads as it is)."""
    return _jpeg_frame(data) is not None


def _jpeg_frame(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, mode) of a plain JPEG, as Pillow would read them; None for anything else.

    The markers are walked from start of image to start of scan by their lengths. Anything
    unusual (fill bytes, a second frame, a frame Pillow refuses, an MPO's index, a segment running
    past the end) returns None, and Pillow parses the file: this is a shortcut, never a judge.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    frame = None
    at, end = 2, len(data)
    while at + 4 <= end and data[at] == 0xFF:
        marker = data[at + 1]
        length = (data[at + 2] << 8) | data[at + 3]
        if marker == 0xDA:  # start of scan: the header is over
            return frame
        if length < 2 or at + 2 + length > end or not 0xC0 <= marker <= 0xFE:
            return None
        if 0xD0 <= marker <= 0xD9:  # restart, start or end of image: no length follows
            return None
        if marker in _START_OF_FRAME:
            if frame is not None or length < 8:
                return None
            bits, layers = data[at + 4], data[at + 9]
            height = (data[at + 5] << 8) | data[at + 6]
            width = (data[at + 7] << 8) | data[at + 8]
            if bits != 8 or layers not in _JPEG_MODES or not width or not height:
                return None
            frame = (width, height, _JPEG_MODES[layers])
        elif marker == 0xE2 and data.startswith(b"MPF\0", at + 4):
            return None  # Pillow names it MPO
        at += 2 + length
    return None


def inspect_image(data: bytes) -> ImageInfo:
    """Identify the image in `data` or raise ImageRejected with the failure's class."""
    header = inspect_header(data)
    header.close()
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
    with open_quietly(data) as image:
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
