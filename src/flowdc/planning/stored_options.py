"""The options that decide what a committed shard holds, recorded in the plan.

A resume with other values would keep the committed shards as they are and run the rest with the
new values: one dataset with two kinds of samples (resized and not, filtered and not), and an
overview.json stating the new values for all of them. So the plan records these values and a
rerun that changes one is refused. Network options (timeouts, rates, retries) may change freely.
"""

from __future__ import annotations

from typing import Any

from flowdc.config.options import DownloadConfig

STORED_OPTIONS = (
    "resize_mode",
    "image_size",
    "resize_only_if_bigger",
    "encode_format",
    "encode_quality",
    "min_image_size",
    "max_aspect_ratio",
    "max_image_area",
    "verify_hash",
    "license_col",
    "license_filter",
    "dedupe",
    "max_per_class",
    "min_per_class",
    "seed",
)
_RESIZE_ONLY = ("image_size", "resize_only_if_bigger")  # meaningless without a resize


def stored_options(config: DownloadConfig) -> dict[str, Any]:
    """The values of STORED_OPTIONS that matter for `config`, as the plan records them."""
    values = {name: getattr(config, name) for name in STORED_OPTIONS}
    if values["resize_mode"] == "no":
        for name in _RESIZE_ONLY:
            values.pop(name)
        if values["encode_format"] is None and config.output_format != "imagefolder":
            values.pop("encode_quality")  # nothing is encoded: the bytes are stored as they came
    if values["max_per_class"] is None:
        values.pop("seed")  # no sample is drawn
    return values


def changed_options(recorded: dict[str, Any] | None, config: DownloadConfig) -> list[str]:
    """'name old -> new' for each stored option `config` changes; none for a plan made before
    the options were recorded."""
    if recorded is None:
        return []
    wanted = stored_options(config)
    fields = DownloadConfig.model_fields
    changed = []
    for name in STORED_OPTIONS:
        old, new = (values.get(name, fields[name].default) for values in (recorded, wanted))
        if old != new:
            changed.append(f"{name} {old!r} -> {new!r}")
    return changed
