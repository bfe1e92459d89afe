"""The tar writer: its own ustar headers are byte for byte what tarfile writes, and its file,
written around the page cache where it can, holds exactly what was written."""

from __future__ import annotations

import mmap
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.shard.writers.direct import BUFFER_BYTES, AppendFile
from flowdc.shard.writers.webdataset import TarShardWriter, ustar_header


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


def _direct_works(folder: Path) -> bool:
    """Whether this filesystem takes O_DIRECT writes (tmpfs, macOS and some others do not)."""
    probe = folder / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    try:
        page = mmap.mmap(-1, 4096)
        os.write(fd, page)
        return bool(getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 700_000), max_size=12),
    direct=st.booleans(),
)
def test_an_append_file_holds_exactly_what_was_written(sizes: list[int], direct: bool) -> None:
    """Chunks of any size, across the aligned buffer's edges, direct or not."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        path = Path(folder) / "out.bin"
        chunks = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
        appended = AppendFile(path, direct=direct)
        for first in range(0, len(chunks), 3):  # in parts, as the tar writer hands them
            appended.write(*chunks[first : first + 3])
        assert appended.size == sum(sizes)
        appended.close()
        assert path.read_bytes() == b"".join(chunks)


def test_writes_go_around_the_page_cache_where_the_filesystem_allows(tmp_path: Path) -> None:
    appended = AppendFile(tmp_path / "out.bin")
    appended.write(b"x" * (3 * BUFFER_BYTES + 123))
    assert appended.direct == _direct_works(tmp_path)  # not dropped on the way
    appended.close()
    assert (tmp_path / "out.bin").stat().st_size == 3 * BUFFER_BYTES + 123


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_on_tmpfs_the_file_is_right_whichever_way_it_was_written() -> None:
    """tmpfs refused O_DIRECT before Linux 6.6 and takes it since: either way, the bytes."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        path = Path(folder) / "out.bin"
        appended = AppendFile(path)
        assert appended.direct == _direct_works(Path(folder))
        appended.write(b"abc" * 1_000_000)
        appended.close()
        assert path.read_bytes() == b"abc" * 1_000_000


def test_a_shard_larger_than_the_buffer_reads_back_whole(tmp_path: Path) -> None:
    writer = TarShardWriter(tmp_path, 3)
    bodies = {f"{i:04d}": bytes([i]) * (150_000 + 511 * i) for i in range(40)}  # 6 MB
    for key, body in bodies.items():
        writer.add(key, "jpg", body, {}, "cat", 0)
    writer.commit()
    tar = tmp_path / "00003.tar"
    assert tar.stat().st_size % tarfile.RECORDSIZE == 0
    with tarfile.open(tar) as archive:
        got = {m.name[:4]: archive.extractfile(m).read() for m in archive if m.name.endswith("jpg")}
    assert got == bodies
    assert not list(tmp_path.glob(".*"))  # no temporary file left
