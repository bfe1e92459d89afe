"""Building a DownloadConfig from a config file and overrides, with one-line errors."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowdc.config.options import OPTION_NAMES, DownloadConfig
from flowdc.core.errors import FlowDCError


def normalize_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _unknown_key_error(key: str, source: str) -> FlowDCError:
    close = difflib.get_close_matches(normalize_key(key), OPTION_NAMES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return FlowDCError(
        f"unknown option '{key}' in {source}: {hint}(`flowdc download --help` lists every option)"
    )


def _format_validation_error(err: ValidationError, source: str) -> FlowDCError:
    first = err.errors()[0]
    if not first["loc"]:  # a check of several options together: its message says it all
        return FlowDCError(str(first["msg"]).removeprefix("Value error, "))
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        return FlowDCError(
            f"missing required option '{where}' ({source}): give --{where} or set it in the "
            f"config file"
        )
    if first["type"] == "extra_forbidden":
        return _unknown_key_error(where, source)
    got = first.get("input")
    return FlowDCError(f"bad value for '{where}' ({source}): {first['msg']} (got {got!r})")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON config file into normalized keys, with one-line errors for every failure."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FlowDCError(f"config file not found: {file}; check the --config path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowDCError(f"cannot read config file {file}: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlowDCError(
            f"config file {file} is not valid JSON: {exc.msg} at line {exc.lineno} column "
            f"{exc.colno}; fix the file"
        ) from None
    if not isinstance(raw, dict):
        raise FlowDCError(f"config file {file} must hold a JSON object of option: value pairs")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = normalize_key(key)
        if name not in OPTION_NAMES:
            raise _unknown_key_error(key, str(file))
        values[name] = value
    return values


def build_config(
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "options",
) -> DownloadConfig:
    """Merge config-file values with overrides (command line or keyword arguments win)."""
    merged: dict[str, Any] = {}
    for values in (file_values or {}, overrides or {}):
        for key, value in values.items():
            name = normalize_key(key)
            if name not in OPTION_NAMES:
                raise _unknown_key_error(key, source)
            merged[name] = value
    try:
        return DownloadConfig(**merged)
    except ValidationError as err:
        raise _format_validation_error(err, source) from None
