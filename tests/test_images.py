"""Image checks that need no server: truncated files, end markers, trailing padding."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from flowdc.core.errors import ImageRejected
from flowdc.core.images import Header, _jpeg_frame, _pillow_header, inspect_header, inspect_image
from flowdc.testserver import make_image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_file_cut_short_is_not_an_image(fmt: str) -> None:
    data = make_image(7, 200, 150, fmt=fmt)
    assert inspect_image(data).width == 200
    with pytest.raises(ImageRejected) as rejected:
        inspect_image(data[: len(data) * 2 // 3])
    assert rejected.value.status == "not_an_image"
    assert "truncated" in rejected.value.message


@pytest.mark.parametrize("trailer", [b"\x00" * 512, b"\x00" * 9000, b"ftypmp42" + b"\xaa" * 70000])
def test_data_after_the_end_marker_is_accepted(trailer: bytes) -> None:
    """Padding, or a motion photo's video appended after the JPEG, is not truncation."""
    data = make_image(8, 120, 90) + trailer
    info = inspect_image(data)
    assert (info.extension, info.width, info.height) == ("jpg", 120, 90)


def test_a_bmp_shorter_than_its_header_says_is_rejected() -> None:
    data = make_image(9, 40, 30, fmt="BMP")
    assert inspect_image(data).extension == "bmp"
    with pytest.raises(ImageRejected):
        inspect_image(data[:-200])


def _pillow_view(data: bytes) -> tuple[str, int, int, str] | None:
    """What Pillow's lazy open says of `data`, or None when it refuses it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format or "", image.width, image.height, image.mode
    except Exception:
        return None


def _jpeg(width: int, height: int, mode: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 90 if mode == "L" else (10, 200, 30, 0)[: len(mode)]).save(
        buffer, "JPEG", **options
    )
    return buffer.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 900),
    height=st.integers(1, 900),
    mode=st.sampled_from(["L", "RGB", "CMYK"]),
    progressive=st.booleans(),
    subsampling=st.sampled_from([0, 1, 2]),
    exif=st.booleans(),
    icc=st.booleans(),
    comment=st.binary(max_size=300),
)
def test_the_jpeg_shortcut_reads_what_pillow_reads(
    width: int,
    height: int,
    mode: str,
    progressive: bool,
    subsampling: int,
    exif: bool,
    icc: bool,
    comment: bytes,
) -> None:
    options: dict[str, object] = {"progressive": progressive, "subsampling": subsampling}
    if exif:
        tags = Image.Exif()
        tags[0x0112] = 6
        options["exif"] = tags.tobytes()
    if icc:
        options["icc_profile"] = b"\x00" * 700
    if comment:
        options["comment"] = comment
    data = _jpeg(width, height, mode, **options)
    assert _jpeg_frame(data) == (width, height, mode) == _pillow_view(data)[1:]
    header = inspect_header(data)
    assert (header.format, header.width, header.height, header.mode) == _pillow_view(data)
    assert header.orientation == (6 if exif else None)  # read through Pillow, on demand


def _verdict(inspect: Callable[[bytes, int], Header], data: bytes) -> tuple[object, ...]:
    try:
        header = inspect(data, 10_000)
    except ImageRejected:
        return ("refused",)
    return header.format, header.width, header.height, header.mode


@settings(max_examples=400, deadline=None)
@given(
    position=st.integers(0, 700),
    value=st.integers(0, 255),
    cut=st.integers(0, 900),
)
def test_a_damaged_jpeg_gets_the_verdict_pillow_gives(position: int, value: int, cut: int) -> None:
    """One byte of the header changed, or the file cut short: the shortcut accepts what Pillow's
    parse accepts, with the same size and mode, and refuses what it refuses (the status may
    differ: a damaged frame may read as too large where Pillow stumbles on a later table)."""
    data = bytearray(_jpeg(123, 77, "RGB", comment=b"x" * 200))
    data[position % len(data)] = value
    damaged = bytes(data[: max(1, len(data) - cut)])
    assert _verdict(inspect_header, damaged) == _verdict(_pillow_header, damaged)


def test_the_jpeg_shortcut_leaves_unusual_files_to_pillow() -> None:
    plain = _jpeg(64, 48, "RGB")
    assert _jpeg_frame(plain) == (64, 48, "RGB")
    padded = plain[:2] + b"\xff\xff" + plain[2:]  # fill bytes before a marker
    assert _jpeg_frame(padded) is None
    assert inspect_image(padded).width == 64
    buffer = io.BytesIO()  # an MPO: a JPEG with an index of further frames
    Image.new("RGB", (32, 24)).save(
        buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (32, 24))]
    )
    assert _jpeg_frame(buffer.getvalue()) is None
    assert inspect_image(buffer.getvalue()).format == "MPO"
    assert _jpeg_frame(make_image(1, 20, 20, fmt="PNG")) is None


def test_a_jpeg_bomb_is_refused_on_its_frame() -> None:
    """65,500 x 65,500 in the frame and nothing behind it: refused without Pillow."""
    data = bytearray(_jpeg(16, 16, "RGB"))
    frame_at = data.index(b"\xff\xc0")
    data[frame_at + 5 : frame_at + 9] = (65500).to_bytes(2, "big") * 2
    assert _jpeg_frame(bytes(data)) == (65500, 65500, "RGB")
    with pytest.raises(ImageRejected) as rejected:
        inspect_header(bytes(data), max_pixels=0)
    assert rejected.value.status == "too_large"
    assert "decompression bomb" in rejected.value.message
