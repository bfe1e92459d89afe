"""The plan: what a rerun may and may not change (stored options)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flowdc
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import PLAN_META
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
