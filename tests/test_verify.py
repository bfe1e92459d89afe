"""A shard sent back by a worker (storage/verify.py, storage/gather.py): real shards made by the
local engine, spoiled in each way a worker could, must be refused; unspoiled ones commit as the
local engine commits them. No TaskVine needed: these are the manager's checks alone."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.core.errors import ShardRejected
from flowdc.core.layout import results_path, stats_path, tar_path
from flowdc.core.results import ShardResult
from flowdc.planning.plan import Plan
from flowdc.storage.gather import commit_checked_shard
from flowdc.storage.verify import check_returned_shard
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN

ROWS = 12


def _made(server: ImageServer, folder: Path, output_format: str) -> Path:
    """A finished output of one shard of ROWS rows (a few of them 404s)."""
    urls = [
        server.url(f"status/404/{i}.jpg") if i % 5 == 2 else server.url(f"img/{i}.jpg")
        for i in range(ROWS)
    ]
    labels = [f"c{i % 3}" for i in range(ROWS)]
    listing = folder / "list.parquet"
    pq.write_table(
        pa.table({"url": urls, "label": labels, "note": [str(i) for i in range(ROWS)]}), listing
    )
    options = {**QUICK_RUN, "shard_size": ROWS, "label": "label", "output_format": output_format}
    flowdc.download(input=str(listing), output=str(folder / "made"), **options)
    return folder / "made"


@pytest.fixture(scope="module", params=["webdataset", "imagefolder"])
def made(
    request: pytest.FixtureRequest, server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _made(server, tmp_path_factory.mktemp(request.param), request.param)


class Returned:
    """What a worker would send for shard 0, as files beside an output holding only the plan."""

    def __init__(self, made: Path, folder: Path) -> None:
        self.output = folder / "out"
        self.output.mkdir()
        for name in (".flowdc-plan.json", ".flowdc-plan.parquet"):
            shutil.copy(made / name, self.output / name)
        plan = Plan.load(self.output)
        assert plan is not None
        self.plan = plan
        self.tar = folder / "shard.tar"
        self.results = folder / "shard.parquet"
        self.stats = folder / "shard_stats.json"
        if plan.output_format == "imagefolder":
            paths = pq.read_table(results_path(made, 0)).column("path").to_pylist()
            with tarfile.open(self.tar, "w", format=tarfile.USTAR_FORMAT) as bundle:
                for relative in filter(None, paths):
                    bundle.add(made / relative, arcname=Path(relative).name)
        else:
            shutil.copy(tar_path(made, 0), self.tar)
        shutil.copy(results_path(made, 0), self.results)
        shutil.copy(stats_path(made, 0), self.stats)

    def check(self) -> object:
        return check_returned_shard(
            self.plan, 0, self.plan.read_shard(0), self.tar, self.results, self.stats
        )

    def rewrite_results(self, change) -> None:  # type: ignore[no-untyped-def]
        pq.write_table(change(pq.read_table(self.results)), self.results)

    def rewrite_tar(self, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        with tarfile.open(self.tar, "w", format=tarfile.USTAR_FORMAT) as archive:
            for info, data in members:
                archive.addfile(info, io.BytesIO(data))

    def members(self) -> list[tuple[tarfile.TarInfo, bytes]]:
        with tarfile.open(self.tar) as archive:
            return [(m, archive.extractfile(m).read()) for m in archive]  # type: ignore[union-attr]


@pytest.fixture
def returned(made: Path, tmp_path: Path) -> Returned:
    return Returned(made, tmp_path)


def _rejected(returned: Returned, reason: str) -> None:
    with pytest.raises(ShardRejected, match=reason):
        returned.check()


def test_an_unspoiled_shard_commits_as_the_local_engine_did(returned: Returned, made: Path) -> None:
    checked = returned.check()
    result = commit_checked_shard(returned.plan, checked, worker="far:42")  # type: ignore[arg-type]
    assert result.worker == "far:42" and result.rows == ROWS
    local = ShardResult.load(made, 0)
    assert (result.successes, result.failures, result.bytes) == (
        local.successes,
        local.failures,
        local.bytes,
    )
    assert pq.read_table(results_path(returned.output, 0)).equals(
        pq.read_table(results_path(made, 0))
    )
    if returned.plan.output_format == "webdataset":
        assert tar_path(returned.output, 0).read_bytes() == tar_path(made, 0).read_bytes()
    else:
        for image in made.glob("*/*.jpg"):
            relative = image.relative_to(made)
            assert (returned.output / relative).read_bytes() == image.read_bytes()
        assert not returned.tar.exists() and not list(returned.output.glob(".*.journal"))


def test_the_stats_counts_are_recomputed_never_taken(returned: Returned) -> None:
    stats = json.loads(returned.stats.read_text())
    stats.update(successes=10**6, bytes=10**12, status_counts={"success": 10**6})
    returned.stats.write_text(json.dumps(stats))
    result = commit_checked_shard(returned.plan, returned.check(), worker="w")  # type: ignore[arg-type]
    assert result.successes < ROWS and result.bytes < 10**9


def test_a_flipped_byte_is_caught(returned: Returned) -> None:
    data = bytearray(returned.tar.read_bytes())
    data[512 + 40] ^= 0xFF  # inside the first member's bytes (an image)
    returned.tar.write_bytes(bytes(data))
    _rejected(returned, "its bytes are not those its results row names")


def test_a_missing_or_changed_row_is_caught(returned: Returned) -> None:
    returned.rewrite_results(lambda table: table.slice(0, ROWS - 1))
    _rejected(returned, f"has {ROWS - 1} rows, the plan {ROWS}")


def test_a_row_for_another_url_is_caught(returned: Returned) -> None:
    def swap(table: pa.Table) -> pa.Table:
        urls = table.column("url").to_pylist()
        urls[0] = "http://elsewhere.example/x.jpg"
        return table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls))

    returned.rewrite_results(swap)
    _rejected(returned, "url column is not the plan's")


def test_an_extra_member_is_caught(returned: Returned) -> None:
    extra = tarfile.TarInfo("000000099.jpg")
    extra.size = 4
    returned.rewrite_tar([*returned.members(), (extra, b"\xff\xd8\xff\xd9")])
    _rejected(returned, "'000000099.jpg' that is no sample of this shard")


def test_a_missing_member_is_caught(returned: Returned) -> None:
    returned.rewrite_tar(returned.members()[1:])
    _rejected(returned, "lacks 1 member")


@pytest.mark.parametrize("name", ["../000000000.jpg", "/etc/000000000.jpg", "sub/000000000.jpg"])
def test_a_path_out_of_the_shard_is_caught(returned: Returned, name: str) -> None:
    members = returned.members()
    info, data = members[0]
    info.name = name
    returned.rewrite_tar([(info, data), *members[1:]])
    _rejected(returned, "which is no member name")


def test_a_link_is_caught(returned: Returned) -> None:
    members = returned.members()
    link = tarfile.TarInfo(members[0][0].name)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    returned.rewrite_tar([(link, b""), *members[1:]])
    _rejected(returned, "no regular file")


def test_bytes_hidden_in_padding_or_after_the_end_are_caught(returned: Returned) -> None:
    info, _ = returned.members()[0]
    data = bytearray(returned.tar.read_bytes())
    padding_at = 512 + info.size  # the first member's padding (its size is no multiple of 512)
    assert info.size % 512
    data[padding_at] = 1
    returned.tar.write_bytes(bytes(data))
    _rejected(returned, "data hidden after")
    data[padding_at] = 0
    returned.tar.write_bytes(bytes(data) + b"secret")
    _rejected(returned, "data after its end")


def test_a_cut_archive_is_caught(returned: Returned) -> None:
    data = returned.tar.read_bytes()
    returned.tar.write_bytes(data[: 512 + 100])
    _rejected(returned, "cut short")


def test_a_results_table_that_does_not_read_is_caught(returned: Returned) -> None:
    returned.results.write_bytes(b"PAR1 not really")
    _rejected(returned, "does not read")


def test_a_wrong_path_or_label_is_caught(returned: Returned) -> None:
    def relabel(table: pa.Table) -> pa.Table:
        ok = pc.equal(table.column("status"), "success")
        first = pc.index(ok, True).as_py()
        paths = table.column("path").to_pylist()
        paths[first] = "elsewhere/" + paths[first].rsplit("/", 1)[-1]
        return table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths))

    returned.rewrite_results(relabel)
    _rejected(returned, "its path is not its")


def test_stats_of_the_wrong_shape_are_caught(returned: Returned) -> None:
    stats = json.loads(returned.stats.read_text())
    returned.stats.write_text(json.dumps({**stats, "hosts": {"h": {"requests": "many"}}}))
    _rejected(returned, "are not numbers")
    returned.stats.write_text(json.dumps({**stats, "shard": 3}))
    _rejected(returned, "not this shard's")
    returned.stats.write_text("{not json")
    _rejected(returned, "no JSON")


def test_a_spoiled_header_is_caught(returned: Returned) -> None:
    data = bytearray(returned.tar.read_bytes())
    data[3] ^= 0x01  # the first member's name: its header's checksum no longer matches
    returned.tar.write_bytes(bytes(data))
    _rejected(returned, "no ustar header")


def test_a_shard_with_repeated_urls_passes(server: ImageServer, tmp_path: Path) -> None:
    """Rows that repeat a URL of their shard get their own sample of their owner's bytes
    (shard/repeats.py): their members are theirs, with the owner's digest."""
    urls = [server.url(f"img/{i // 2}.jpg") for i in range(ROWS)]
    listing = tmp_path / "list.parquet"
    pq.write_table(pa.table({"url": urls, "label": [f"c{i % 3}" for i in range(ROWS)]}), listing)
    options = {**QUICK_RUN, "shard_size": ROWS, "label": "label"}
    flowdc.download(input=str(listing), output=str(tmp_path / "made"), **options)
    results = pq.read_table(results_path(tmp_path / "made", 0))
    assert results.column("same_url_as").null_count < ROWS  # the repeats are there
    (tmp_path / "back").mkdir()
    returned = Returned(tmp_path / "made", tmp_path / "back")
    commit_checked_shard(returned.plan, returned.check(), worker="w")  # type: ignore[arg-type]
