"""Image processing without a server: resize modes, colour modes, EXIF orientation, bombs."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import struct
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError, ImageRejected
from flowdc.shard.processing import DedupeIndex, Options, process_image
from flowdc.testserver import make_image

MODES = ["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def solid(mode: str, size: tuple[int, int], colour: object, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, fmt, **save)
    return buffer.getvalue()


# -- resize modes --------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    size=st.integers(1, 400),
    mode=st.sampled_from(MODES),
    only_if_bigger=st.booleans(),
    fmt=st.sampled_from(["JPEG", "PNG"]),
)
def test_resize_modes_give_the_sizes_they_promise(
    width: int, height: int, size: int, mode: str, only_if_bigger: bool, fmt: str
) -> None:
    data = make_image(width * 1000 + height, width, height, fmt=fmt)
    options = Options(resize_mode=mode, image_size=size, resize_only_if_bigger=only_if_bigger)
    out = process_image(data, options)
    image = decode(out.data)
    assert (out.width, out.height) == image.size
    assert (out.original_width, out.original_height) == (width, height)
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    small, large = min(width, height), max(width, height)
    w, h = image.size
    if mode == "no":
        assert out.data is data  # the original bytes, untouched
        return
    kept = only_if_bigger and (
        (mode in ("keep_ratio", "center_crop") and small <= size)
        or (mode in ("keep_ratio_largest", "border") and large <= size)
    )
    if kept:
        assert out.data is data
    elif mode == "keep_ratio":
        # the other side is the exactly scaled one, rounded (and at least 1 pixel)
        assert min(w, h) == size
        assert abs(max(w, h) - size * large / small) <= 1
    elif mode == "keep_ratio_largest":
        assert max(w, h) == size
        assert abs(min(w, h) - size * small / large) <= 1
    else:  # center_crop, border: a square of image_size
        assert (w, h) == (size, size)


def test_border_pads_with_white_and_keeps_the_picture_in_the_middle() -> None:
    data = solid("RGB", (200, 100), (0, 0, 200), "PNG")
    image = decode(process_image(data, Options(resize_mode="border", image_size=64)).data)
    assert image.size == (64, 64)
    assert image.getpixel((32, 2)) == (255, 255, 255)  # padding above
    assert image.getpixel((32, 32)) == (0, 0, 200)


def test_center_crop_takes_the_middle() -> None:
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))  # the middle third is green
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    out = decode(process_image(buffer.getvalue(), Options("center_crop", 50)).data)
    assert out.size == (50, 50)
    for x in (0, 49):  # resampling at the box's edge may borrow a little of the red outside
        red, green, _ = out.getpixel((x, 25))
        assert green > 230 and red < 30, (x, red, green)


def test_nothing_asked_keeps_the_original_bytes_in_every_format() -> None:
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP"):
        data = make_image(3, 80, 60, fmt=fmt)
        out = process_image(data, Options())
        assert out.data is data, fmt
    # the same format asked for explicitly is no reason to re-encode either
    jpeg = make_image(4, 80, 60)
    assert process_image(jpeg, Options(encode_format="jpg")).data is jpeg
    assert process_image(jpeg, Options("keep_ratio", 60, resize_only_if_bigger=True)).data is jpeg


@pytest.mark.parametrize(
    ("encode", "magic"), [("jpg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")]
)
def test_encode_format_and_quality(encode: str, magic: bytes) -> None:
    data = make_image(5, 300, 200, fmt="PNG" if encode != "png" else "JPEG")
    low = process_image(
        data, Options(encode_format=encode, encode_quality=1 if encode != "png" else 0)
    )
    high = process_image(
        data, Options(encode_format=encode, encode_quality=95 if encode != "png" else 9)
    )
    assert low.data.startswith(magic) and high.data.startswith(magic)
    assert low.extension == encode
    assert decode(low.data).size == (300, 200)
    if encode == "png":  # level 0 stores, level 9 compresses
        assert len(low.data) > len(high.data)
    else:
        assert len(low.data) < len(high.data)


def test_jpeg_draft_decodes_at_reduced_scale_and_still_gives_the_size(monkeypatch) -> None:
    """A 4000x3000 JPEG resized to 256 is decoded at 1/8 scale (DCT scaling)."""
    seen: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        seen.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = make_image(6, 4000, 3000)
    out = process_image(data, Options("keep_ratio", 256))
    assert (out.width, out.height) == (341, 256)
    assert seen and seen[0] == (500, 375)  # 1/8 of the stored size, still above the target


# -- colour modes, animation, EXIF ---------------------------------------------------------------
def _palette(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).convert("P", palette=Image.Palette.ADAPTIVE).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


COLOUR_CASES = [
    (
        "CMYK JPEG",
        solid("CMYK", (40, 30), (0, 255, 255, 0), "JPEG", quality=95),
        "RGB",
        (255, 0, 0),
    ),
    ("P PNG", _palette((200, 30, 40)), "RGB", (200, 30, 40)),
    ("P with transparency", solid("P", (40, 30), 0, "PNG", transparency=0), "RGBA", None),
    ("LA PNG", solid("LA", (40, 30), (200, 128), "PNG"), "RGBA", (200, 200, 200, 128)),
    ("L JPEG", solid("L", (40, 30), 77, "JPEG", quality=95), "L", 77),
    ("1-bit PNG", solid("1", (40, 30), 1, "PNG"), "L", 255),
    ("16-bit PNG", solid("I;16", (40, 30), 32768, "PNG"), "L", 128),
    ("32-bit int TIFF", solid("I", (40, 30), 65535, "TIFF"), "L", 255),
    (
        "RGBA WebP",
        solid("RGBA", (40, 30), (0, 0, 255, 128), "WEBP", lossless=True),
        "RGBA",
        (0, 0, 255, 128),
    ),
    ("YCbCr JPEG", solid("RGB", (40, 30), (0, 200, 0), "JPEG", quality=95), "RGB", (0, 200, 0)),
]


@pytest.mark.parametrize(
    ("name", "data", "want_mode", "pixel"), COLOUR_CASES, ids=[c[0] for c in COLOUR_CASES]
)
def test_every_colour_mode_comes_out_right(
    name: str, data: bytes, want_mode: str, pixel: object
) -> None:
    out = decode(process_image(data, Options("keep_ratio", 20, encode_format="png")).data)
    assert out.mode == want_mode, name
    assert out.size == (27, 20)
    got = out.getpixel((10, 10))
    if pixel is None:  # fully transparent
        assert got[3] == 0
    elif isinstance(pixel, tuple):
        assert all(abs(a - b) <= 3 for a, b in zip(got, pixel, strict=True)), (name, got)
    else:
        assert abs(got - pixel) <= 3, (name, got)


def test_alpha_to_jpeg_is_flattened_on_white() -> None:
    data = solid("RGBA", (40, 30), (0, 0, 0, 0), "PNG")
    out = decode(process_image(data, Options("keep_ratio", 20, encode_format="jpg")).data)
    assert out.mode == "RGB" and all(v >= 250 for v in out.getpixel((5, 5)))


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (60, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    for fmt in ("png", "webp"):
        out = process_image(buffer.getvalue(), Options("keep_ratio", 20, encode_format=fmt))
        image = decode(out.data)
        assert getattr(image, "n_frames", 1) == 1
        red = image.convert("RGB").getpixel((10, 10))
        assert red[0] > 200 and red[2] < 50, red


def _upright() -> Image.Image:
    """60x30, red in the top-left quarter, blue elsewhere: every rotation and flip differs."""
    image = Image.new("RGB", (60, 30), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 30, 15))
    return image


# How each EXIF orientation stores the upright picture (the inverse of what a viewer applies:
# 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 viewer turns 90 clockwise, 7 transverse, 8 90
# counter-clockwise).
_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["keep_ratio", "keep_ratio_largest", "center_crop"])
def test_exif_orientation_is_applied_before_resizing(orientation: int, mode: str) -> None:
    method = _STORED[orientation]
    stored = _upright() if method is None else _upright().transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)
    out = process_image(buffer.getvalue(), Options(mode, 20))
    image = decode(out.data)
    want = {"keep_ratio": (40, 20), "keep_ratio_largest": (20, 10), "center_crop": (20, 20)}
    assert image.size == want[mode] == (out.width, out.height)
    if mode != "center_crop":
        top_left = image.getpixel((2, 2))
        bottom_right = image.getpixel((image.width - 3, image.height - 3))
        assert top_left[0] > 200 and top_left[2] < 60, (orientation, top_left)
        assert bottom_right[2] > 200 and bottom_right[0] < 60, (orientation, bottom_right)
    assert out.original_width == stored.width  # the stored (header) size


# -- filters and bombs ---------------------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries almost no data: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "area"),
    [
        (_png_header_only(100_000, 100_000), 89_478_485),  # over Pillow's own hard limit
        (_png_header_only(20_000, 20_000), 89_478_485),  # over the default max_image_area
        (make_image(8, 1200, 1000, fmt="PNG"), 1_000_000),  # a real image over a lower limit
    ],
)
def test_a_bomb_is_refused_without_being_decoded(monkeypatch, data: bytes, area: int) -> None:
    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    for mode in ("no", "keep_ratio"):
        with pytest.raises(ImageRejected) as rejected:
            process_image(data, Options(mode, 64, max_image_area=area))
        assert rejected.value.status == "too_large"
        assert "too large" in rejected.value.message
    assert decoded == []


def test_min_image_size_and_max_aspect_ratio() -> None:
    small = make_image(9, 50, 30)
    with pytest.raises(ImageRejected) as rejected:
        process_image(small, Options(min_image_size=31))
    assert rejected.value.status == "too_small"
    assert process_image(small, Options(min_image_size=30)).data is small
    with pytest.raises(ImageRejected) as rejected:
        process_image(small, Options(max_aspect_ratio=1.6))
    assert rejected.value.status == "bad_aspect_ratio"
    assert process_image(small, Options(max_aspect_ratio=1.7)).width == 50


def test_expected_hash_is_compared_in_any_case() -> None:
    data = make_image(10, 30, 20)
    digest = hashlib.sha256(data).hexdigest()
    assert process_image(data, Options(), f" {digest.upper()} ").sha256 == digest
    with pytest.raises(ImageRejected) as rejected:
        process_image(data, Options(), "0" * 64)
    assert rejected.value.status == "hash_mismatch"


def test_broken_pixels_after_a_good_header_are_not_an_image() -> None:
    data = bytearray(make_image(11, 200, 150))
    start = data.find(b"\xff\xda") + 20
    data[start : start + 2000] = b"\xff\x00" * 1000  # garbage in the entropy-coded data
    try:
        out = process_image(bytes(data), Options("keep_ratio", 64))
    except ImageRejected as rejected:
        assert rejected.status == "not_an_image"
    else:  # libjpeg may also decode garbage into grey pixels: then the size must still hold
        assert (out.width, out.height) == (85, 64)


# -- dedupe claims and options --------------------------------------------------------------------
def test_dedupe_claims_are_shared_and_a_killed_shards_claims_are_taken_over(tmp_path: Path) -> None:
    digest = "ab" * 32
    first = DedupeIndex(tmp_path, 3)
    assert first.claim(digest, "000030001") is None
    assert first.claim(digest, "000030002") == "000030001"  # same run, same shard
    assert DedupeIndex(tmp_path, 4).claim(digest, "000040000") == "000030001"  # another shard
    first.close()
    rerun = DedupeIndex(tmp_path, 3)  # shard 3 killed and run again: its old claim is stale
    assert rerun.claim(digest, "000030005") is None
    assert DedupeIndex(tmp_path, 4).claim(digest, "000040000") == "000030005"


def test_png_quality_is_a_compression_level() -> None:
    with pytest.raises(ValueError, match="compression level 0-9"):
        DownloadConfig(input="a", output="b", encode_format="png", encode_quality=50)
    from flowdc.config.loading import build_config

    with pytest.raises(FlowDCError, match="compression level"):
        build_config(
            overrides={"input": "a", "output": "b", "encode_format": "png", "encode_quality": 50}
        )


def test_processes_opening_a_new_dedupe_index_at_once_all_get_it(tmp_path: Path) -> None:
    """Workers forked together open the new index at the same moment; SQLite's switch to WAL
    answered "database is locked" to the losers at once (a shard failed so in CI). 4 openers at
    once, 60 times: the old code failed about one time in 15."""
    errors: list[str] = []
    for trial in range(60):
        folder = tmp_path / str(trial)
        folder.mkdir()
        start = threading.Barrier(4)

        def open_index(shard: int, folder: Path = folder, start: threading.Barrier = start) -> None:
            start.wait(10)
            try:
                DedupeIndex(folder, shard).close()
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))

        openers = [threading.Thread(target=open_index, args=(shard,)) for shard in range(4)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(30)
    assert errors == []
