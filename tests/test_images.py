"""Image checks that need no server: truncated files, end markers, trailing padding."""

from __future__ import annotations

import pytest

from flowdc.images import ImageRejected, inspect_image
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
