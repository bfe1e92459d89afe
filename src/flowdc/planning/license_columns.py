"""Which input column holds each image's licence, and the licence filter a shard applies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.licenses import LicenseFilter, split_filter


def license_column(config: DownloadConfig, names: Sequence[str], where: object) -> str | None:
    """The input column holding licences: --license_col, else `license` when present."""
    if config.license_col is not None:
        if config.license_col not in names:
            raise FlowDCError(
                f"--license_col '{config.license_col}' is not a column of {where}; it has: "
                f"{', '.join(names)}; name the column that holds each image's licence"
            )
        return config.license_col
    if "license" in names:
        return "license"
    if config.license_filter is not None:
        raise FlowDCError(
            f"--license_filter needs each row's licence, but {where} has no column license; "
            f"name the column with --license_col"
        )
    return None


def plan_license_column(extra_columns: Mapping[str, str], config: DownloadConfig) -> str | None:
    """The plan's (and results table's) name of the licence column, or None; `extra_columns`
    is the plan's (planned name -> input column)."""
    wanted = config.license_col or "license"
    return next((name for name, source in extra_columns.items() if source == wanted), None)


def row_filter(
    extra_columns: Mapping[str, str], config: DownloadConfig
) -> tuple[str, LicenseFilter] | None:
    """(licence column, filter) when --license_filter is given, for run_shard."""
    if config.license_filter is None:
        return None
    column = plan_license_column(extra_columns, config)
    if column is None:
        raise FlowDCError("--license_filter: the plan has no licence column; give --license_col")
    return column, LicenseFilter(split_filter(config.license_filter))
