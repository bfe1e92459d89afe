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


def test_padding_after_the_end_marker_is_accepted() -> None:
    data = make_image(8, 120, 90) + b"\x00" * 512
    info = inspect_image(data)
    assert (info.extension, info.width, info.height) == ("jpg", 120, 90)
