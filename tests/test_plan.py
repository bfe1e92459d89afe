"""The plan: what a rerun may and may not change (stored options)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.config.loading import build_config
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import PLAN_META
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import make_plan, shard_size_for
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN, parquet_url_table


# -- resuming with other image options ---------------------------------------------------------
def test_resume_with_other_processing_options_is_refused(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """A rerun with --resize_mode (or any option that changes what is stored) used to report
    every shard done, and overview.json then claimed the resize the images never had; a
    resume of a partial run mixed resized and original images in one dataset."""
    source, output = parquet_url_table(fresh_server, tmp_path / "urls.parquet"), tmp_path / "ds"
    first = flowdc.download(input=str(source), output=str(output), **QUICK_RUN)
    assert first.successful == 4
    hits = sum(fresh_server.hits.values())

    with pytest.raises(FlowDCError) as refused:
        flowdc.download(
            input=str(source),
            output=str(output),
            resize_mode="center_crop",
            image_size=32,
            **QUICK_RUN,
        )
    message = str(refused.value)
    assert "\n" not in message
    assert "resize_mode 'no' -> 'center_crop'" in message and "image_size" in message
    assert "--overwrite" in message
    with pytest.raises(FlowDCError, match="dedupe False -> True"):
        flowdc.download(input=str(source), output=str(output), dedupe=True, **QUICK_RUN)
    with pytest.raises(FlowDCError, match="min_image_size 0 -> 80"):
        flowdc.download(
            input=str(source), output=str(output), min_image_size=80, retry_failed=True, **QUICK_RUN
        )
    assert sum(fresh_server.hits.values()) == hits, "a refused run fetched something"
    overview = json.loads((output / "overview.json").read_text())
    assert overview["script_inputs"]["resize_mode"] == "no"

    # options that change nothing stored (network ones; image_size without a resize, a quality
    # with nothing encoded) resume
    again = flowdc.download(
        input=str(source),
        output=str(output),
        image_size=32,
        encode_quality=50,
        **{**QUICK_RUN, "timeout": 7},
    )
    assert again.successful == 4
    assert sum(fresh_server.hits.values()) == hits


def test_resume_of_an_output_planned_before_settings_were_recorded(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """Outputs made by earlier versions have no recorded settings: they resume as before."""
    source, output = parquet_url_table(fresh_server, tmp_path / "urls.parquet"), tmp_path / "ds"
    flowdc.download(input=str(source), output=str(output), **QUICK_RUN)
    meta = json.loads((output / PLAN_META).read_text())
    del meta["settings"]
    (output / PLAN_META).write_text(json.dumps(meta))

    again = flowdc.download(input=str(source), output=str(output), dedupe=True, **QUICK_RUN)
    assert again.successful == 4


# -- shard sizes: a short list keeps every process busy -------------------------------------------
def _csv_list(path: Path, rows: int) -> Path:
    path.write_text("url\n" + "".join(f"http://h{i % 7}.test/{i}.jpg\n" for i in range(rows)))
    return path


@pytest.mark.parametrize(
    ("rows", "processes", "given", "shards", "size"),
    [
        (3000, 2, None, 4, 750),  # was one shard of 3000: one process of two worked
        (3000, 1, None, 1, 3000),  # one process runs its shards together anyway
        (3001, 4, None, 8, 376),
        (5, 4, None, 5, 1),
        (100_000, 2, None, 10, 10_000),  # long enough for default shards
        (3000, 2, 3000, 1, 3000),  # --shard_size given: kept
    ],
)
def test_a_short_list_is_cut_into_shards_for_every_process(
    tmp_path: Path, rows: int, processes: int, given: int | None, shards: int, size: int
) -> None:
    options = {"shard_size": given} if given else {}
    config = build_config(
        {"input": str(_csv_list(tmp_path / "urls.csv", rows)), "output": str(tmp_path / "ds")},
        {"processes": processes, "concurrent_downloads": 64, **options},
    )
    (tmp_path / "ds").mkdir()
    plan = make_plan(config, InputTable(config.input))

    assert (plan.shard_count, plan.shard_size, plan.total_rows) == (shards, size, rows)
    assert sum(plan.shard_rows(shard) for shard in range(shards)) == rows
    assert plan.key_width == len(str(size - 1))
    assert shard_size_for(config, rows) == size


def test_every_process_gets_a_shard_of_a_short_list(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """40 URLs and two processes: four shards, run by both processes; a rerun with the same
    command (no --shard_size) resumes the plan instead of refusing it."""
    # each answer waits a second: a shard takes as long, so a process cannot take them all
    urls = [fresh_server.url(f"slow/1/{i % 8}.jpg", host=i % 2) for i in range(40)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)
    options = {**QUICK_RUN, "processes": 2}
    options.pop("shard_size")

    first = flowdc.download(input=source, output=tmp_path / "ds", **options)

    assert (first.total, first.successful) == (40, 40)
    markers = [json.loads(p.read_text()) for p in sorted((tmp_path / "ds").glob("*_stats.json"))]
    assert [marker["rows"] for marker in markers] == [10, 10, 10, 10]
    assert len({marker["worker"] for marker in markers}) == 2
    again = flowdc.download(input=source, output=tmp_path / "ds", **options)
    assert again.successful == 40
