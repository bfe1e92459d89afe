"""Engines: where shards run. Each is a module here with an `Engine` subclass (engines/base.py);
the runner picks one by the name of `--engine`. A module is imported only when its engine is
used, so a run on the local engine never loads Dask."""

from __future__ import annotations

import importlib

from flowdc.config.options import DownloadConfig
from flowdc.engines.base import Echo, Engine

ENGINES: dict[str, str] = {
    "local": "flowdc.engines.local:LocalEngine",
    "dask": "flowdc.engines.dask:DaskEngine",
    "slurm": "flowdc.engines.dask:DaskEngine",
    "taskvine": "flowdc.engines.taskvine.engine:TaskVineEngine",
}
"""--engine name -> module:class of its Engine."""


def engine_for(config: DownloadConfig, echo: Echo) -> Engine:
    module, _, name = ENGINES[config.engine].partition(":")
    engine_class: type[Engine] = getattr(importlib.import_module(module), name)
    return engine_class(config, echo)
