"""`flowdc report OUTPUT`, `flowdc validate OUTPUT` and `flowdc split OUTPUT`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowdc.core.errors import FlowDCError
from flowdc.metadata.croissant import write_split_sets
from flowdc.metadata.report import current_overview, write_report
from flowdc.metadata.split_output import SplitRequest, describe, write_splits
from flowdc.metadata.validate import validate_output
from flowdc.planning.plan import Plan
from flowdc.storage.output import OutputLock


def _plan(output: str) -> Plan:
    folder = Path(output)
    if not folder.is_dir():
        raise FlowDCError(f"{output} is not a folder; give the --output folder of a download")
    plan = Plan.load(folder)
    if plan is None:
        raise FlowDCError(
            f"{output} holds no FLOW-DC plan (.flowdc-plan.json); give the --output folder of "
            f"a download"
        )
    return plan


def run_report(output: str) -> int:
    plan = _plan(output)
    path = write_report(plan, current_overview(plan))
    print(f"wrote {path}")
    return 0


def run_validate(output: str) -> int:
    plan = _plan(output)
    verdict = validate_output(Path(plan.output))
    print(verdict.text(Path(output)))
    return 0 if verdict.ok else 1


def split_output(output: str, request: SplitRequest) -> dict[str, Any]:
    """Split the output's stored samples, then bring croissant.json and report.html up to
    date; returns the summary (splits.json)."""
    plan = _plan(output)
    with OutputLock(Path(plan.output)):
        summary = write_splits(plan, request)
        write_split_sets(plan)
        write_report(plan, current_overview(plan))
    return summary


def run_split(output: str, request: SplitRequest) -> int:
    summary = split_output(output, request)
    for line in describe(summary):
        print(line)
    return 0 if summary["leakage_check"]["ok"] else 1
