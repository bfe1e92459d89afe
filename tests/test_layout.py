"""The output layout (core/layout.py) and the engine registry: names every layer relies on."""

from __future__ import annotations

from typing import get_args

import pytest

from flowdc.config.options import DownloadConfig, Engine
from flowdc.core import layout
from flowdc.engines import ENGINES, engine_for
from flowdc.engines.base import Engine as EngineBase


@pytest.mark.parametrize("name", sorted(layout.RUN_FILES))
def test_run_files_and_their_temporary_names_are_flowdcs(name: str) -> None:
    assert layout.made_by_flowdc(name)
    temporary = layout.temp_name(name)
    assert temporary.startswith(".") and layout.TEMP_MARK in temporary
    assert layout.final_name(temporary) == name and layout.made_by_flowdc(temporary)


@pytest.mark.parametrize("shard", [0, 42, 99_999, 100_000])
def test_shard_files_are_flowdcs_and_distinct(shard: int) -> None:
    names = [
        layout.tar_name(shard),
        layout.results_path("out", shard).name,
        layout.stats_path("out", shard).name,
        layout.journal_path("out", shard).name,
    ]
    assert all(layout.made_by_flowdc(name) for name in names)
    assert layout.MARKER_FILE.match(layout.stats_path("out", shard).name)
    other = {layout.tar_name(shard * 10), layout.tar_name(shard + 1)}
    prefixes = layout.shard_temp_prefixes(shard)
    assert not any(layout.temp_name(name).startswith(prefixes) for name in other - set(names))
    assert all(layout.temp_name(name).startswith(prefixes) for name in names[:3])


@pytest.mark.parametrize(
    "name", ["notes.txt", "README.md", "labels.json.bak", "0001.tar", "images", ".flowdc-lock"]
)
def test_a_users_files_are_not_flowdcs(name: str) -> None:
    assert not layout.made_by_flowdc(name)


def test_every_engine_option_has_an_engine() -> None:
    assert set(ENGINES) == set(get_args(Engine))
    config = DownloadConfig(input="x.csv", output="out")
    engine = engine_for(config, print)
    assert isinstance(engine, EngineBase) and type(engine).__name__ == "LocalEngine"


@pytest.mark.parametrize(
    ("location", "remote"),
    [
        ("s3://b/k", True),
        ("gs://b", True),
        ("/data/out", False),
        ("file:///x", False),
        ("out", False),
    ],
)
def test_remote_locations(location: str, remote: bool) -> None:
    assert layout.is_remote(location) is remote
