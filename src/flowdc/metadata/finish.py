"""What the end of a run writes beside overview.json: croissant.json and report.html."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowdc.config.options import DownloadConfig
from flowdc.core.layout import ATTRIBUTION_FILE
from flowdc.metadata.attribution import write_attribution
from flowdc.metadata.croissant import write_croissant
from flowdc.metadata.report import write_report
from flowdc.planning.plan import Plan


def finish_metadata(
    plan: Plan, config: DownloadConfig, overview: dict[str, Any], echo: Callable[[str], None]
) -> None:
    """Write attribution.csv, the Croissant metadata (at the configured level) and the report.

    A failure here (a full disk) is a warning: the shards are committed and a rerun or
    `flowdc report` writes these files again.
    """
    try:
        write_attribution(plan, config)
    except OSError as exc:
        echo(f"warning: could not write {ATTRIBUTION_FILE}: {exc.strerror or exc}")
    try:
        write_croissant(plan, config, overview, echo)
    except OSError as exc:
        echo(f"warning: could not write croissant.json: {exc.strerror or exc}")
    try:
        write_report(plan, overview)
    except OSError as exc:
        echo(f"warning: could not write report.html: {exc.strerror or exc}")
