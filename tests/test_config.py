"""Config files and command-line options: names, spellings, precedence and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.cli import build_parser
from flowdc.config.loading import build_config, read_config_file
from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN, parquet_url_table, run_cli

DEAD = "http://127.0.0.1:9/img"  # nothing listens on port 9: connections are refused at once

# Every key of the original FLOW-DC's JSON config files that this version keeps, with values
# in the original's style (e.g. an integer timeout, a null label).
ORIGINAL_CONFIG: dict[str, Any] = {
    "input": "files/input/group_1.parquet",
    "input_format": "parquet",
    "output": "files/output/group_1",
    "output_format": "imagefolder",
    "url": "photo_url",
    "label": "taxon_name",
    "concurrent_downloads": 500,
    "timeout": 30,
    "max_retry_attempts": 3,
    "enable_rate_limiting": True,
    "rate_limit": 10.5,
    "rate_capacity": 40,
    "create_overview": True,
    "croissant": "basic_croissant",
    "dataset_name": "gbif_url_10000 Image Dataset",
    "dataset_description": "A collection of images organized by taxonomic name (taxon_name)",
    "dataset_license": "CC-BY-4.0",
    "dataset_creator": "Zi Deng",
    "dataset_version": "1.0.0",
}


# -- helpers -------------------------------------------------------------------------------------
def write_config(path: Path, values: dict[str, Any] | str) -> Path:
    path.write_text(values if isinstance(values, str) else json.dumps(values), encoding="utf-8")
    return path


def load(path: Path) -> DownloadConfig:
    return build_config(read_config_file(path), source=str(path))


def one_line_error(excinfo: pytest.ExceptionInfo[FlowDCError], *fragments: str) -> str:
    message = str(excinfo.value)
    assert message.strip()
    assert "\n" not in message, f"error message is not one line: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def assert_one_line_failure(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 2 and exactly one line on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {done.stderr!r}"
    assert lines[0].startswith("flowdc: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def dashed(name: str) -> str:
    return name.replace("_", "-")


# -- config files --------------------------------------------------------------------------------
def test_original_flowdc_config_keys_are_accepted(tmp_path: Path) -> None:
    config = load(write_config(tmp_path / "config.json", ORIGINAL_CONFIG))

    for key, value in ORIGINAL_CONFIG.items():
        assert getattr(config, key) == value, key
    assert isinstance(config.timeout, float)
    assert config.shard_size == 10_000  # not in the file: the default


def test_original_config_with_null_label_and_false_flags(tmp_path: Path) -> None:
    values = {
        **ORIGINAL_CONFIG,
        "label": None,
        "output_format": "webdataset",
        "enable_rate_limiting": False,
        "create_overview": False,
        "croissant": "no_croissant",
    }

    config = load(write_config(tmp_path / "config.json", values))

    assert config.label is None
    assert config.enable_rate_limiting is False
    assert config.create_overview is False


def test_dashed_keys_work_in_config_files(tmp_path: Path) -> None:
    values = {(dashed(key) if "_" in key else key): value for key, value in ORIGINAL_CONFIG.items()}
    assert "max-retry-attempts" in values and "dataset-name" in values

    config = load(write_config(tmp_path / "config.json", values))

    assert config == load(write_config(tmp_path / "underscored.json", ORIGINAL_CONFIG))


def test_every_option_is_a_config_key_in_both_spellings(tmp_path: Path) -> None:
    defaults = DownloadConfig(input="in.csv", output="out")
    for name in DownloadConfig.model_fields:
        value = getattr(defaults, name)
        for key in {name, dashed(name)}:
            path = write_config(
                tmp_path / "c.json", {"input": "in.csv", "output": "out", key: value}
            )
            assert getattr(load(path), name) == value, key


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("concurent_downloads", "concurrent_downloads"),
        ("max-retry-attemps", "max_retry_attempts"),
        ("rate_limt", "rate_limit"),
        ("datasetname", "dataset_name"),
        ("labels", "label"),
        ("time_out", "timeout"),
    ],
)
def test_unknown_key_names_it_and_suggests_the_close_match(
    tmp_path: Path, key: str, suggestion: str
) -> None:
    path = write_config(tmp_path / "config.json", {**ORIGINAL_CONFIG, key: 1})

    with pytest.raises(FlowDCError) as excinfo:
        load(path)

    one_line_error(excinfo, f"'{key}'", f"'{suggestion}'", "config.json")


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.json", {**ORIGINAL_CONFIG, "zzz_qqq": True})

    with pytest.raises(FlowDCError) as excinfo:
        load(path)

    message = one_line_error(excinfo, "'zzz_qqq'")
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout", -1),
        ("timeout", 0),
        ("timeout", "soon"),
        ("output_format", "zip"),
        ("input_format", "docx"),
        ("concurrent_downloads", "many"),
        ("concurrent_downloads", 0),
        ("max_retry_attempts", -1),
        ("rate_limit", 0),
        ("rate_capacity", 1.5),
        ("enable_rate_limiting", "maybe"),
        ("croissant", "full"),
        ("shard_size", 0),
        ("label", ""),
        ("url", "   "),
        ("dataset_name", ["a", "b"]),
    ],
)
def test_bad_value_names_the_option(tmp_path: Path, key: str, value: Any) -> None:
    path = write_config(tmp_path / "config.json", {**ORIGINAL_CONFIG, key: value})

    with pytest.raises(FlowDCError) as excinfo:
        load(path)

    one_line_error(excinfo, f"'{key}'", "config.json")


def test_bad_value_under_a_dashed_key_names_the_option(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.json", {**ORIGINAL_CONFIG, "max-retry-attempts": 99})

    with pytest.raises(FlowDCError) as excinfo:
        load(path)

    one_line_error(excinfo, "max_retry_attempts", "99")


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('{\n  "input": "a.csv",\n  "output": \n}\n', 4, 1),
        ('{\n  "input": "a.csv",\n  "timeout": 30,\n}\n', 4, 1),
        ('{"input": "a.csv" "output": "out"}', 1, 19),
        ("{'input': 'a.csv'}", 1, 2),
        ("", 1, 1),
    ],
)
def test_invalid_json_names_line_and_column(
    tmp_path: Path, text: str, line: int, column: int
) -> None:
    path = write_config(tmp_path / "config.json", text)

    with pytest.raises(FlowDCError) as excinfo:
        read_config_file(path)

    one_line_error(excinfo, "config.json", "not valid JSON", f"line {line} column {column}")


@pytest.mark.parametrize("text", ["[1, 2]", '"input"', "null", "42"])
def test_config_that_is_not_an_object(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path / "config.json", text)

    with pytest.raises(FlowDCError) as excinfo:
        read_config_file(path)

    one_line_error(excinfo, "config.json", "object")


def test_config_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FlowDCError) as excinfo:
        read_config_file(tmp_path / "missing.json")

    one_line_error(excinfo, "missing.json", "not found")


def test_config_without_required_options(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.json", {"output": "out"})

    with pytest.raises(FlowDCError) as excinfo:
        load(path)

    one_line_error(excinfo, "'input'", "--input")


def test_config_file_with_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ORIGINAL_CONFIG).encode())

    assert load(path).url == "photo_url"


def test_overrides_win_over_the_config_file() -> None:
    file_values = {"input": "a.csv", "output": "out", "url": "wrong", "timeout": -1, "label": "x"}

    config = build_config(file_values, {"url": "right", "timeout": 2, "max-retry-attempts": 0})

    assert (config.url, config.timeout, config.max_retry_attempts) == ("right", 2.0, 0)
    assert config.label == "x"


def test_unknown_override_names_it() -> None:
    with pytest.raises(FlowDCError) as excinfo:
        build_config(overrides={"input": "a", "output": "b", "concurency": 3}, source="options")

    one_line_error(excinfo, "'concurency'", "options")


# -- the command line: help and option spellings -------------------------------------------------
def test_top_level_help_exits_zero() -> None:
    done = run_cli("--help", timeout=60)

    assert done.returncode == 0, done.stderr
    assert "download" in done.stdout and "demo" in done.stdout
    assert done.stderr == ""


def test_download_help_mentions_every_option_in_both_spellings() -> None:
    done = run_cli("download", "--help", timeout=60, env={"COLUMNS": "100"})

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    text = done.stdout
    squeezed = re.sub(r"\s+", "", text)  # help text is wrapped, maybe at hyphens
    for name, field in DownloadConfig.model_fields.items():
        for option in {f"--{name}", f"--{dashed(name)}"}:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
        assert field.description
        assert re.sub(r"\s+", "", field.description) in squeezed, name
    assert re.search(r"(?<![\w-])--config(?![\w-])", text)


def _cli_value(name: str) -> tuple[str, Any]:
    """A valid command-line value for option `name` and what it parses to."""
    annotation = DownloadConfig.model_fields[name].annotation
    for kind in (annotation, *get_args(annotation)):
        if get_origin(kind) is Literal:
            choice = get_args(kind)[-1]
            return choice, choice
    kinds = {annotation, *get_args(annotation)}
    if int in kinds:
        return "7", 7
    if float in kinds:
        return "2.5", 2.5
    if any(get_origin(kind) is dict for kind in kinds):
        return '{"a": 1}', '{"a": 1}'  # JSON text: DownloadConfig parses it
    assert str in kinds, name
    return "some value", "some value"


@pytest.mark.parametrize("name", list(DownloadConfig.model_fields))
def test_every_option_parses_in_both_spellings(name: str) -> None:
    parser = build_parser()
    base = ["download", "--input", "in.csv", "--output", "out"]
    annotation = DownloadConfig.model_fields[name].annotation
    if annotation in (bool, bool | None):
        for option in {name, dashed(name)}:
            assert getattr(parser.parse_args([*base, f"--{option}"]), name) is True
            assert getattr(parser.parse_args([*base, f"--no-{option}"]), name) is False
        return
    text, value = _cli_value(name)
    for option in {name, dashed(name)}:
        assert getattr(parser.parse_args([*base, f"--{option}", text]), name) == value, option


def test_options_not_given_are_left_to_the_config_file() -> None:
    """Parser defaults must not override config-file values: only given options are set."""
    args = vars(build_parser().parse_args(["download", "--config", "c.json", "--timeout", "2"]))

    assert args["config"] == "c.json"
    assert {name: args[name] for name in DownloadConfig.model_fields if name in args} == {
        "timeout": 2.0
    }


# -- the command line: a run, with a flag fixing the config file ---------------------------------
@pytest.fixture
def url_table(tmp_path: Path) -> Path:
    path = tmp_path / "urls.csv"
    path.write_text(
        "image_url,species,obs_id\n"
        f"{DEAD}/1.jpg,cat,00123\n"
        f"{DEAD}/2.jpg,dog,00124\n"
        ",dog,00125\n"
        "not a url,cat,00126\n",
        encoding="utf-8",
    )
    return path


def test_command_line_flag_overrides_the_config_file(tmp_path: Path, url_table: Path) -> None:
    output = tmp_path / "out"
    config = write_config(
        tmp_path / "config.json",
        {
            "input": str(url_table),
            "output": str(output),
            "output_format": "webdataset",
            "url": "photo_url",  # wrong: the table calls it image_url
            "label": "species",
            "timeout": 30,
            "max_retry_attempts": 3,
            "create_overview": False,
            "dataset_name": "spiders",
            "enable_rate_limiting": False,
        },
    )

    wrong = run_cli("download", "--config", str(config), cwd=tmp_path, timeout=120)

    assert wrong.returncode == 2, (wrong.stdout, wrong.stderr)
    assert "Traceback" not in wrong.stderr
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("flowdc: error:")]
    assert len(errors) == 1 and errors[0] == wrong.stderr.splitlines()[-1], wrong.stderr
    assert "'photo_url'" in errors[0] and "image_url, species, obs_id" in errors[0]
    assert not (output / "00000.parquet").exists()

    fixed = run_cli(
        "download",
        "--config",
        str(config),
        "--url",
        "image_url",
        "--max_retry_attempts",
        "0",
        "--timeout",
        "2",
        "--create-overview",
        "--processes",
        "1",
        cwd=tmp_path,
        timeout=120,
    )

    assert fixed.returncode == 3, (fixed.stdout, fixed.stderr)  # finished; every URL is dead
    assert "Traceback" not in fixed.stderr
    results = pq.read_table(output / "00000.parquet").to_pylist()
    assert [row["obs_id"] for row in results] == ["00123", "00124", "00125", "00126"]
    assert [row["url"] for row in results] == [f"{DEAD}/1.jpg", f"{DEAD}/2.jpg", "", "not a url"]
    assert [row["label"] for row in results] == ["cat", "dog", "dog", "cat"]
    assert [row["status"] for row in results] == [
        "failed_to_download",
        "failed_to_download",
        "invalid_url",
        "invalid_url",
    ]
    assert [row["attempts"] for row in results] == [1, 1, 0, 0]  # --max_retry_attempts 0 won
    # what the run used: command-line values over the file's, the file's over the defaults
    overview = json.loads((output / "overview.json").read_text(encoding="utf-8"))
    used = overview["script_inputs"]
    assert (used["url"], used["timeout"], used["max_retry_attempts"]) == ("image_url", 2.0, 0)
    assert (used["label"], used["dataset_name"]) == ("species", "spiders")
    assert used["create_overview"] is True and used["enable_rate_limiting"] is False


def test_dashed_flags_and_dashed_config_keys_in_a_run(tmp_path: Path, url_table: Path) -> None:
    output = tmp_path / "out"
    config = write_config(
        tmp_path / "config.json",
        {"input": str(url_table), "output": str(output), "max-retry-attempts": 3, "url": "x"},
    )

    done = run_cli(
        "download",
        "--config",
        str(config),
        "--url",
        "image_url",
        "--max-retry-attempts",
        "0",
        "--timeout",
        "2",
        "--shard-size",
        "3",
        "--no-enable-rate-limiting",
        "--processes",
        "1",
        cwd=tmp_path,
        timeout=120,
    )

    assert done.returncode == 3, (done.stdout, done.stderr)  # finished, but every URL is dead
    first = pq.read_table(output / "00000.parquet")
    second = pq.read_table(output / "00001.parquet")
    assert (first.num_rows, second.num_rows) == (3, 1)
    assert set(first.column("attempts").to_pylist()) <= {0, 1}
    assert "label" in first.column_names and first.column("label").null_count == 3


# -- the command line: errors are one line with exit code 2 --------------------------------------
BAD_CONFIGS: dict[str, tuple[dict[str, Any] | str, list[str]]] = {
    "invalid-json": ('{\n  "input": "urls.csv",\n  "output": "out",\n}\n', ["line 4 column 1"]),
    "unknown-key": (
        {"input": "urls.csv", "output": "out", "concurent_downloads": 8},
        ["'concurent_downloads'", "'concurrent_downloads'"],
    ),
    "negative-timeout": ({"input": "urls.csv", "output": "out", "timeout": -1}, ["'timeout'"]),
    "zip-output": (
        {"input": "urls.csv", "output": "out", "output_format": "zip"},
        ["'output_format'"],
    ),
    "many-downloads": (
        {"input": "urls.csv", "output": "out", "concurrent_downloads": "many"},
        ["'concurrent_downloads'"],
    ),
    "not-an-object": ("[1, 2, 3]", ["object"]),
    "no-input": ({"output": "out"}, ["'input'"]),
    "missing-input-file": ({"input": "nope.csv", "output": "out"}, ["nope.csv"]),
}

# Config values that are only found wrong once the input is opened.
BAD_PLANNING_CONFIGS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "wrong-url-column": (
        {"input": "urls.csv", "output": "out", "url": "photo_url"},
        ["'photo_url'", "image_url, species, obs_id"],
    ),
    "wrong-label-column": (
        {"input": "urls.csv", "output": "out", "url": "image_url", "label": "taxon"},
        ["'taxon'", "image_url, species, obs_id"],
    ),
    "wrong-input-format": (
        {"input": "urls.csv", "output": "out", "url": "image_url", "input_format": "parquet"},
        ["urls.csv", "parquet"],
    ),
    "imagefolder-without-label": (
        {"input": "urls.csv", "output": "out", "url": "image_url", "output_format": "imagefolder"},
        ["--label"],
    ),
}


@pytest.mark.parametrize(
    "case",
    [*BAD_CONFIGS, *BAD_PLANNING_CONFIGS],
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, url_table: Path, case: str) -> None:
    values, fragments = {**BAD_CONFIGS, **BAD_PLANNING_CONFIGS}[case]
    config = write_config(tmp_path / "config.json", values)

    done = run_cli("download", "--config", str(config), cwd=tmp_path, timeout=60)

    assert_one_line_failure(done, *fragments)
    assert not (tmp_path / "out" / "00000.parquet").exists()


@pytest.mark.parametrize("case", list(BAD_PLANNING_CONFIGS))
def test_bad_config_found_while_planning_exits_2_with_one_error_line(
    tmp_path: Path, url_table: Path, case: str
) -> None:
    """What holds today: exit code 2, no traceback, one error line, and it is the last line."""
    values, fragments = BAD_PLANNING_CONFIGS[case]
    config = write_config(tmp_path / "config.json", values)

    done = run_cli("download", "--config", str(config), cwd=tmp_path, timeout=60)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("flowdc: error: ")]
    assert errors == lines[-1:], done.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert not (tmp_path / "out" / "00000.parquet").exists()


def test_missing_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_cli("download", "--config", "nowhere.json", cwd=tmp_path, timeout=60)

    assert_one_line_failure(done, "nowhere.json")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["download", "--input", "urls.csv", "--output", "out", "--bogus"], ["--bogus"]),
        (["download", "--input", "urls.csv", "--output", "out", "--bogus", "1"], ["--bogus"]),
        (["download", "--input", "urls.csv", "--output", "out", "--time", "3"], ["--time"]),
        (["download", "--input", "urls.csv", "--output", "out", "--timeout", "abc"], ["abc"]),
        (["download", "--input", "urls.csv", "--output", "out", "--output_format", "zip"], ["zip"]),
        (["download", "--input", "urls.csv", "--output", "out", "--timeout", "-1"], ["timeout"]),
        (
            ["download", "--input", "urls.csv", "--output", "out", "--concurrent-downloads", "0"],
            ["concurrent_downloads"],
        ),
        (["download", "--input", "urls.csv", "--output", "out", "--timeout"], ["--timeout"]),
        (["download", "--output", "out"], ["'input'"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    tmp_path: Path, url_table: Path, args: list[str], fragments: list[str]
) -> None:
    done = run_cli(*args, cwd=tmp_path, timeout=60)

    assert_one_line_failure(done, *fragments)
    assert done.stdout == ""
    assert not (tmp_path / "out" / "00000.parquet").exists()


def test_unknown_flag_with_a_config_file_exits_2_with_one_line(
    tmp_path: Path, url_table: Path
) -> None:
    config = write_config(tmp_path / "config.json", {"input": "urls.csv", "output": "out"})

    done = run_cli("download", "--config", str(config), "--max_retries", "0", cwd=tmp_path)

    assert_one_line_failure(done, "--max_retries")


def test_json_object_options_from_the_command_line_and_files() -> None:
    paths = {"input": "in.csv", "output": "out"}
    config = build_config(paths, {"storage_options": '{"endpoint_url": "http://127.0.0.1:9"}'})
    assert config.storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    assert "storage_options" not in config.model_dump()  # may hold secrets
    config = build_config(
        {**paths, "engine": "slurm", "listen": ":8786", "slurm_options": {"queue": "short"}}, None
    )
    assert config.slurm_options == {"queue": "short"}
    with pytest.raises(FlowDCError, match=r"bad value for 'storage_options'.*not valid JSON"):
        build_config(paths, {"storage_options": "{endpoint"})


# -- paths ---------------------------------------------------------------------------------------
def test_home_in_config_paths_is_expanded(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell expands ~ on the command line, but not in a JSON config file or a Python call:
    '~/datasets/birds' used to make a folder named '~' in the working directory (which a user
    then removes with `rm -rf ~`...)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    parquet_url_table(fresh_server, home / "urls.parquet")
    config = work / "config.json"
    config.write_text(json.dumps({"input": "~/urls.parquet", "output": "~/datasets/birds"}))

    result = flowdc.download(config, **QUICK_RUN)

    assert result.successful == 4
    assert result.output == home / "datasets" / "birds"
    assert (home / "datasets" / "birds" / "overview.json").exists()
    assert list(work.iterdir()) == [config]


# -- the TaskVine engine's options ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 9123}, r"^--port need --engine taskvine"),
        ({"engine": "dask", "password": "pw"}, r"^--password need --engine taskvine"),
        ({"shared_output": True}, r"^--shared_output need --engine taskvine"),
        ({"engine": "taskvine", "listen": ":8786"}, r"^--listen are Dask's"),
        ({"engine": "taskvine", "ssl_key": "k.pem"}, r"^--ssl_key and --ssl_cert go together"),
        ({"engine": "taskvine", "catalog": "127.0.0.1:9097"}, r"give --manager_name"),
        ({"engine": "taskvine", "dedupe": True}, r"^--dedupe with --engine taskvine needs"),
        ({"engine": "taskvine", "retry_failed": True}, r"^--retry_failed with --engine taskvine"),
        ({"engine": "taskvine", "port": 70000}, r"port"),
    ],
)
def test_taskvine_options_that_cannot_work_are_refused(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(FlowDCError, match=message):
        build_config({"input": "in.csv", "output": "out", **options})


def test_taskvine_options_that_work() -> None:
    paths = {"input": "in.csv", "output": "out", "engine": "taskvine"}
    shared = {"dedupe": True, "retry_failed": True}
    assert build_config({**paths, "shared_output": True, **shared}).dedupe
    assert build_config({**paths, "output": "s3://bucket/prefix", "dedupe": True}).dedupe
    config = build_config({**paths, "port": 0, "manager_name": "gbif", "catalog": "127.0.0.1:1"})
    assert (config.port, config.manager_name) == (0, "gbif")
