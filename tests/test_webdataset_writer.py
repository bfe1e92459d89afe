"""The tar writer's own ustar headers are byte for byte what tarfile writes."""

from __future__ import annotations

import tarfile

from hypothesis import given
from hypothesis import strategies as st

from flowdc.writers.webdataset import ustar_header


@given(
    name=st.text(st.characters(codec="ascii", exclude_characters="\0"), min_size=1, max_size=120),
    size=st.one_of(st.integers(0, 10**9), st.just(8**11 - 1), st.just(8**11)),
    mtime=st.integers(0, 2**33),
)
def test_ustar_header_matches_tarfile(name: str, size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    try:
        expected = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError:  # a name or number ustar cannot hold: tarfile's own error, either way
        try:
            ustar_header(name, size, mtime)
        except ValueError:
            return
        raise AssertionError("ustar_header accepted what tarfile refuses") from None
    assert ustar_header(name, size, mtime) == expected
