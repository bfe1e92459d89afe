"""FLOW-DC: turn tables of image URLs and labels into ML-ready image datasets.

The public API (docs/user-guide.md, "Python and notebooks"):

- `download(config=None, **options) -> DownloadResult`: `flowdc download` as a function
- `fetch(url, **options) -> Fetched`, `fetch_many(urls, **options) -> list[Fetched]`
- `results(output) -> pyarrow.Table`, `results_dataframe(output) -> pandas.DataFrame`
- `split(output, ratios, by=None, group=None, seed=0) -> dict`: `flowdc split` as a function
- `DownloadConfig`: every option; `FlowDCError`: the one exception for bad input

Names are imported on first use, so `import flowdc` stays cheap for worker processes.
"""

from typing import Any

from flowdc.core.version import __version__

_EXPORTS = {
    "download": "flowdc.api",
    "fetch": "flowdc.api",
    "fetch_many": "flowdc.api",
    "results": "flowdc.api",
    "results_dataframe": "flowdc.api",
    "split": "flowdc.api",
    "DownloadResult": "flowdc.api",
    "Fetched": "flowdc.api",
    "DownloadConfig": "flowdc.config.options",
    "FlowDCError": "flowdc.core.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowdc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
