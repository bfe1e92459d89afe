"""The `flowdc` command: download, demo, report, validate, split.

Errors a user can fix are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any, get_args

from flowdc.config.groups import OPTION_GROUPS
from flowdc.config.loading import build_config, read_config_file
from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.status import CLASS_CAPPED, CLASS_TOO_SMALL
from flowdc.core.version import __version__

# The exit statuses of `flowdc download`, for a pipeline to act on (also in its --help epilog).
EXIT_FINISHED = 0
EXIT_NOT_FINISHED = 1  # a shard failed, or the disk did: the same command resumes
EXIT_USAGE = 2  # a bad option, config file or input
EXIT_NOTHING_DOWNLOADED = 3
EXIT_BELOW_MIN_SUCCESS_RATE = 4
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports SIGINT
DOWNLOAD_EXIT_STATUSES = (
    f"exit status: {EXIT_FINISHED} the run finished; {EXIT_NOT_FINISHED} it did not finish (a "
    f"shard failed, a full disk): run the same command again; {EXIT_USAGE} a bad option, config "
    f"file or input; {EXIT_NOTHING_DOWNLOADED} it finished but no image was downloaded; "
    f"{EXIT_BELOW_MIN_SUCCESS_RATE} it finished below --min_success_rate; {EXIT_INTERRUPTED} "
    f"interrupted (Ctrl-C, SIGTERM): run the same command again to resume."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"flowdc: error: {message} (see `{self.prog} --help`)\n")


def _option_strings(name: str) -> list[str]:
    dashed = name.replace("_", "-")
    return [f"--{name}"] if dashed == name else [f"--{name}", f"--{dashed}"]


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON config file; options given here override it.")
    fields = DownloadConfig.model_fields
    grouped = {name for names in OPTION_GROUPS.values() for name in names}
    missing = set(fields) - grouped
    assert not missing, f"options without a help group: {missing}"
    for title, names in OPTION_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            field = fields[name]
            help_text = field.description or ""
            default = field.get_default(call_default_factory=False)
            if (
                default is not None
                and field.default_factory is None
                and name not in ("input", "output")
            ):
                help_text += f" (default: {default})"
            annotation = field.annotation
            kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
            if annotation in (bool, bool | None):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                choices = _choices(annotation)
                if choices:
                    kwargs["choices"] = choices
                kwargs["metavar"] = name.upper() if not choices else None
                kwargs["type"] = _type_of(annotation)
            group.add_argument(*_option_strings(name), **kwargs)


def _choices(annotation: Any) -> list[str] | None:
    for arg in (annotation, *get_args(annotation)):
        values = get_args(arg)
        if values and all(isinstance(v, str) for v in values):
            return list(values)
    return None


def _type_of(annotation: Any) -> Any:
    for kind in (int, float):
        if annotation is kind or kind in get_args(annotation):
            return kind
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flowdc",
        description="FLOW-DC turns tables of image URLs and labels into ML-ready image datasets "
        "(WebDataset or ImageFolder), politely, resumably, with a per-URL results table.",
    )
    parser.add_argument("--version", action="version", version=f"flowdc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    download = commands.add_parser(
        "download",
        help="download a URL table into a dataset (resumes when run again)",
        usage="flowdc download [--config FILE] --input FILE --output DIR [options]",
        description="Download the images of a URL table into a WebDataset or ImageFolder dataset."
        " Every option can also be a key of the --config JSON file; options may be written "
        "--with_underscores or --with-dashes.",
        epilog=DOWNLOAD_EXIT_STATUSES,
        allow_abbrev=False,
    )
    _add_download_options(download)
    demo = commands.add_parser(
        "demo",
        help="generate images, serve them locally and download them into a dataset",
        description="Generate a few hundred images, serve them from a local server on 127.0.0.1 "
        "(with a few failing URLs), download them and show what was made.",
        allow_abbrev=False,
    )
    demo.add_argument(
        "--output",
        default="flowdc-demo",
        help="folder for the demo dataset (default: flowdc-demo; replaced if it "
        "holds an earlier demo)",
    )
    demo.add_argument(
        "--output_format",
        "--output-format",
        dest="output_format",
        choices=["webdataset", "imagefolder", "parquet"],
        default="webdataset",
        help="dataset format (default: webdataset)",
    )
    demo.add_argument("--images", type=int, default=300, help="how many images (default: 300)")
    commands.add_parser(
        "worker",
        help="run a worker for `download --engine dask` (flowdc worker tcp://MANAGER:8786) or "
        "--engine taskvine (flowdc worker --engine taskvine MANAGER:9123)",
        add_help=False,
    )
    report = commands.add_parser(
        "report",
        help="write report.html, a self-contained page about a download's output",
        description="Write OUTPUT/report.html (also written at the end of every run): charts "
        "of throughput, successes and failures over time, failure reasons, hosts, classes, "
        "image sizes and a grid of thumbnails, all embedded; it opens offline.",
        allow_abbrev=False,
    )
    report.add_argument("output", metavar="OUTPUT", help="the --output folder of a download")
    validate = commands.add_parser(
        "validate",
        help="check a finished dataset against its results tables (exit 1 on a problem)",
        description="Check that every committed sample is present once with its sha256, that "
        "the tars read, and that croissant.json describes the files as they are. Prints a "
        "verdict; the exit status is 1 when there is a problem.",
        allow_abbrev=False,
    )
    validate.add_argument("output", metavar="OUTPUT", help="the --output folder of a download")
    split = commands.add_parser(
        "split",
        help="split the stored samples into train/validation/test, keeping groups together",
        description="Write the split of every stored sample (splits.parquet, splits.json, one "
        "list per split, and for ImageFolder the folders NAME-splits/train/LABEL/... beside the "
        "output), stratified by class; samples of one group and identical images (same sha256, "
        "or duplicate_of) always share a split. Deterministic for a seed.",
        allow_abbrev=False,
    )
    split.add_argument("output", metavar="OUTPUT", help="the --output folder of a download")
    split.add_argument(
        "--ratios",
        required=True,
        help="train,validation,test shares, such as 0.8,0.1,0.1 (two values: train,test)",
    )
    split.add_argument(
        "--by", metavar="COLUMN", help="column to stratify by (default: the --label column)"
    )
    split.add_argument(
        "--group",
        metavar="COLUMN",
        help="column(s), comma-separated, whose equal values must share a split (an "
        "occurrence, an observer, a site)",
    )
    split.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    return parser


def _download(args: argparse.Namespace, standalone: bool) -> int:
    """`standalone`: this process is the `flowdc` program, not a caller of main()."""
    from flowdc.runner import run_download

    options = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    file_values = read_config_file(args.config) if args.config else None
    source = "command line" if not args.config else f"{args.config} and the command line"
    config = build_config(file_values, options, source=source)
    if standalone and config.engine == "local":  # nothing here will hold a pandas object
        from flowdc.engines.local import without_pandas

        without_pandas()
    summary = run_download(config)
    _print_summary(summary)
    return _exit_status(summary, config)


def _exit_status(summary: Any, config: DownloadConfig) -> int:
    """Finished or not, and for a finished run whether it made what a pipeline needs."""
    if summary.shard_errors:
        return EXIT_NOT_FINISHED
    overview = summary.overview["download_summary"]
    if overview["successful"] == 0:
        print(
            f"flowdc: no image was downloaded (exit status {EXIT_NOTHING_DOWNLOADED})",
            file=sys.stderr,
        )
        return EXIT_NOTHING_DOWNLOADED
    # rows the class sampling left out were never requested: no failure of the run
    breakdown = summary.overview.get("error_breakdown") or {}
    requested = overview["processed"] - sum(
        breakdown.get(s, 0) for s in (CLASS_CAPPED, CLASS_TOO_SMALL)
    )
    wanted = config.min_success_rate
    if wanted is not None and overview["successful"] < wanted * requested:
        print(
            f"flowdc: {100 * overview['successful'] / requested:.1f}% of the requested rows gave "
            f"an image, below --min_success_rate {wanted} "
            f"(exit status {EXIT_BELOW_MIN_SUCCESS_RATE})",
            file=sys.stderr,
        )
        return EXIT_BELOW_MIN_SUCCESS_RATE
    return EXIT_FINISHED


def _print_summary(summary: Any) -> None:
    overview = summary.overview["download_summary"]
    unfinished = overview["total"] - overview["processed"]
    print(
        f"{overview['successful']:,} of {overview['total']:,} images downloaded "
        f"({overview['success_rate_percent']}% of the rows processed) into {summary.output} in "
        f"{summary.seconds:.1f} s"
        + (f"; {unfinished:,} rows not processed yet" if unfinished else "")
    )
    breakdown = summary.overview.get("error_breakdown") or {}
    if breakdown:
        print("failures: " + ", ".join(f"{k} {v:,}" for k, v in breakdown.items()))
    down = {
        host: figures["urls_unavailable"]
        for host, figures in (summary.overview.get("hosts_down") or {}).items()
        if figures["urls_unavailable"]
    }
    if down:
        named = ", ".join(f"{host} ({count:,} URLs)" for host, count in list(down.items())[:5])
        more = f" and {len(down) - 5:,} more" if len(down) > 5 else ""
        print(
            f"hosts marked down (no answer): {named}{more}; when they are back, run the same "
            "command with --retry_failed"
        )
    for shard, message in sorted(summary.shard_errors.items()):
        print(f"shard {shard} failed: {message}", file=sys.stderr)
    if summary.shard_errors:
        print("run the same command again to retry the failed shards", file=sys.stderr)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _worker_engine(arguments: list[str]) -> tuple[str, list[str]]:
    """`flowdc worker [--engine dask|taskvine] ...`: the engine (dask unless given first), and
    the rest of the arguments."""
    if arguments[:1] == ["--engine"] and len(arguments) > 1:
        return arguments[1], arguments[2:]
    if arguments[:1] and arguments[0].startswith("--engine="):
        return arguments[0].partition("=")[2], arguments[1:]
    return "dask", arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["worker"]:
        engine, rest = _worker_engine(arguments[1:])
        if engine == "taskvine":
            from flowdc.engines.taskvine.command import worker_main as taskvine_worker

            return taskvine_worker(rest)
        if engine != "dask":
            print("flowdc: error: `flowdc worker --engine` takes dask or taskvine", file=sys.stderr)
            return 2
        from flowdc.engines.dask import worker_main  # options after the address: `dask worker`'s

        return worker_main(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (timeout, SLURM, docker stop) stops a run the way Ctrl-C does
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "download":
            return _download(args, standalone=argv is None)
        if args.command == "demo":
            from flowdc.demo import run_demo

            return run_demo(args.output, args.output_format, args.images)
        if args.command in ("report", "validate"):
            from flowdc.metadata.commands import run_report, run_validate

            return (run_report if args.command == "report" else run_validate)(args.output)
        if args.command == "split":
            from flowdc.metadata.commands import run_split
            from flowdc.metadata.split_output import SplitRequest

            request = SplitRequest.parse(args.ratios, args.by, args.group, args.seed)
            return run_split(args.output, request)
    except FlowDCError as error:
        from flowdc.core.errors import Interrupted

        print(
            f"flowdc: error: {error}" if not isinstance(error, Interrupted) else f"flowdc: {error}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED if isinstance(error, Interrupted) else EXIT_USAGE
    except KeyboardInterrupt:
        print("flowdc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:  # a full disk, a read-only output, a vanished network share
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"flowdc: error: {error.strerror or error}{where}; fix that, then run the same "
            f"command again to resume",
            file=sys.stderr,
        )
        return EXIT_NOT_FINISHED
    return EXIT_USAGE
