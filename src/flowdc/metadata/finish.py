"""What the end of a run writes beside overview.json: attribution.csv, the split (--split),
croissant.json and report.html."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import ATTRIBUTION_FILE
from flowdc.metadata.attribution import write_attribution
from flowdc.metadata.croissant import write_croissant
from flowdc.metadata.report import write_report
from flowdc.metadata.split_output import SplitRequest, describe, write_splits
from flowdc.planning.plan import Plan


def finish_metadata(
    plan: Plan, config: DownloadConfig, overview: dict[str, Any], echo: Callable[[str], None]
) -> None:
    """Write attribution.csv, the split (--split), the Croissant metadata (at the configured
    level) and the report.

    A failure here (a full disk) is a warning: the shards are committed and a rerun or
    `flowdc report` / `flowdc split` writes these files again.
    """
    try:
        write_attribution(plan, config)
    except OSError as exc:
        echo(f"warning: could not write {ATTRIBUTION_FILE}: {exc.strerror or exc}")
    if config.split is not None:
        request = SplitRequest.parse(
            config.split, config.split_by, config.split_group, config.split_seed
        )
        try:
            for line in describe(write_splits(plan, request)):
                echo(line)
        except (FlowDCError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            echo(f"warning: no split written: {reason}")
    try:
        write_croissant(plan, config, overview, echo)
    except OSError as exc:
        echo(f"warning: could not write croissant.json: {exc.strerror or exc}")
    try:
        write_report(plan, overview)
    except OSError as exc:
        echo(f"warning: could not write report.html: {exc.strerror or exc}")
