"""The user guide and the examples match the code: every option of every command's real argparse
parser is documented (in its --help group, with its --help default), and every example config
file loads."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from flowdc.cli import build_parser
from flowdc.config.groups import OPTION_GROUPS
from flowdc.config.loading import build_config, read_config_file
from flowdc.config.options import DownloadConfig

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "user-guide.md"
EXAMPLES = ROOT / "examples"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = {"flowdc": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def section(text: str, heading: str) -> str:
    """The text under the markdown heading that is `heading`, up to the next heading of its
    level or above."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"docs/user-guide.md has no heading '{heading}'"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, match.end())
    return text[match.end() : end.start() if end else len(text)]


def option_rows(text: str) -> dict[str, list[str]]:
    """`--name` -> the cells of its table row, for rows that start with an option."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `(--[\w-]+)` \|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def help_default(name: str) -> str | None:
    """The default that `flowdc download --help` prints for an option, as cli.py decides it."""
    field = DownloadConfig.model_fields[name]
    default = field.get_default(call_default_factory=False)
    if default is None or field.default_factory is not None or name in ("input", "output"):
        return None
    return str(default)


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.option_strings]


def test_every_option_of_every_command_is_in_the_user_guide() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    documented = option_rows(guide)
    missing = []
    for command, parser in subcommands().items():
        for action in options_of(parser):
            name = action.option_strings[-1 if action.option_strings[0] == "-h" else 0]
            if name not in documented and f"`{command} {name}`" not in guide:
                missing.append(f"{command} {name}")
    missing += [
        f"download --{f}" for f in DownloadConfig.model_fields if f"--{f}" not in documented
    ]
    assert not missing, f"options missing from docs/user-guide.md: {sorted(set(missing))}"


def test_download_options_are_in_their_help_group_with_their_help_default() -> None:
    options = section(GUIDE.read_text(encoding="utf-8"), "Options of `flowdc download`")
    parser = subcommands()["download"]
    groups = [group for group in parser._action_groups if group.title in OPTION_GROUPS]
    assert [group.title for group in groups] == list(OPTION_GROUPS)
    for group in groups:
        rows = option_rows(section(options, group.title))
        for action in group._group_actions:
            name = action.option_strings[0]
            assert name in rows, f"{name} is not documented under '### {group.title}'"
            default = rows[name][0]
            expected = help_default(action.dest)
            if expected is not None:
                assert default == expected, f"{name}: guide says {default!r}, --help {expected!r}"
            else:
                assert default, f"{name}: the guide gives no default"


def test_demo_options_are_documented_with_their_defaults() -> None:
    rows = option_rows(section(GUIDE.read_text(encoding="utf-8"), "flowdc demo"))
    for action in options_of(subcommands()["demo"]):
        if action.dest == "help":
            continue
        name = action.option_strings[0]
        assert name in rows, f"demo {name} is not documented under '### flowdc demo'"
        assert rows[name][0] == str(action.default), name


def test_the_guide_links_to_files_that_exist() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", guide):
        if target.startswith("http") or target == "distributed.md":  # written by another branch
            continue
        assert (GUIDE.parent / target).exists(), f"broken link {target}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda path: path.name)
def test_example_config_loads(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    config = build_config(read_config_file(path), source=path.name)
    assert config.input == raw["input"] and config.output == raw["output"]
