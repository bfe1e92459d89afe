"""`flowdc report OUTPUT` and `flowdc validate OUTPUT`."""

from __future__ import annotations

from pathlib import Path

from flowdc.core.errors import FlowDCError
from flowdc.metadata.report import current_overview, write_report
from flowdc.metadata.validate import validate_output
from flowdc.planning.plan import Plan


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
