"""Labels as folder names: every name safe, distinct (also case-folded), safe labels unchanged."""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowdc
from flowdc.core.labels import EMPTY_LABEL_FOLDER, folder_names, is_safe_as_is
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN

# The classic DOS device names: reserved with or without an extension (NUL.txt is NUL).
CLASSIC_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
WINDOWS_FORBIDDEN = set('<>:"/\\|?*')

HOSTILE = [
    "",
    "..",
    ".",
    "a/b",
    "a\\b",
    "x\x00y",
    "tab\there",
    "CON",
    "nul.txt",
    "Cat",
    "cat",
    "é" * 300,  # 600 bytes of UTF-8
    "a_b",
    ".hidden",
    "__private",
    "trailing. ",
    "new\nline",
    "del\x7f",
    "COM1",
    "lpt9.tar.gz",
    "aux.",
    " spaced ",
    "...",
    "./..",
    "../../etc",
    "a:b",
    'what?"*<>|',
    "_empty_label",
    "x" * 255,
    "😀" * 100,
]


def assert_safe(name: str) -> None:
    assert name, "empty folder name"
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not any(ord(char) < 32 or ord(char) == 127 for char in name), repr(name)
    assert not WINDOWS_FORBIDDEN & set(name), repr(name)
    assert len(name.encode("utf-8")) <= 255, len(name.encode("utf-8"))
    assert name.split(".")[0].upper() not in CLASSIC_RESERVED, repr(name)
    # Windows drops trailing dots and spaces, so such a name is not the folder it names.
    assert not name.endswith((".", " ")), repr(name)


def assert_mapping_ok(labels: list[str], mapping: dict[str, str]) -> None:
    assert set(mapping) == set(labels)
    names = list(mapping.values())
    for name in names:
        assert_safe(name)
    folded = [name.casefold() for name in names]
    assert len(set(folded)) == len(folded), "two labels share a folder (case-insensitively)"
    # macOS file systems also ignore Unicode normalization.
    canonical = [
        unicodedata.normalize("NFD", unicodedata.normalize("NFD", n).casefold()) for n in names
    ]
    assert len(set(canonical)) == len(canonical), "two labels share a folder on macOS"
    # A label that is a safe name and that no other label claims case-insensitively keeps it.
    folded_labels = [label.casefold() for label in labels]
    for label in labels:
        if is_safe_as_is(label) and folded_labels.count(label.casefold()) == 1:
            assert mapping[label] == label


def assert_creatable(root: Path, names: list[str]) -> None:
    """Every name becomes exactly one new folder directly in `root`, and nothing else appears."""
    root.mkdir()
    for name in names:
        folder = root / name
        assert folder.parent == root
        folder.mkdir()
        assert folder.resolve().parent == root.resolve()
    assert sorted(os.listdir(root)) == sorted(names)


def test_hostile_labels(tmp_path: Path) -> None:
    mapping = folder_names(HOSTILE)
    assert_mapping_ok(HOSTILE, mapping)
    assert mapping[""] != EMPTY_LABEL_FOLDER  # "_empty_label" is also a label here
    assert mapping["_empty_label"] == "_empty_label"
    assert mapping["Cat"].casefold() != mapping["cat"].casefold()
    assert mapping["a_b"] == "a_b"
    assert mapping["a/b"] != "a_b"
    assert mapping["x" * 255] != "x" * 255  # too long to keep
    root = tmp_path / "root"
    assert_creatable(root, list(mapping.values()))
    assert os.listdir(tmp_path) == ["root"]


def test_empty_label_alone() -> None:
    assert folder_names([""]) == {"": EMPTY_LABEL_FOLDER}


@pytest.mark.parametrize("label", HOSTILE)
def test_each_hostile_label_alone(label: str) -> None:
    assert_mapping_ok([label], folder_names([label]))


def test_case_variants_are_distinct() -> None:
    labels = ["Cat", "cat", "CAT", "cAt"]
    mapping = folder_names(labels)
    assert_mapping_ok(labels, mapping)
    assert len({name.casefold() for name in mapping.values()}) == 4
    assert sum(mapping[label] == label for label in labels) == 1


SAFE = ["dog", "Golden Retriever", "n01440764", "class_7", "Ελληνικά", "猫", "a.b", "x-y", "COM10"]


def test_safe_labels_keep_their_names() -> None:
    mapping = folder_names(SAFE + HOSTILE)
    for label in SAFE:
        assert mapping[label] == label
    assert folder_names(SAFE) == {label: label for label in SAFE}


def test_names_do_not_depend_on_label_order() -> None:
    assert folder_names(HOSTILE) == folder_names(list(reversed(HOSTILE)))


def test_long_label_is_cut_on_a_character_boundary() -> None:
    label = "é" * 300
    name = folder_names([label])[label]
    assert len(name.encode("utf-8")) <= 255
    name.encode("utf-8").decode("utf-8")
    assert name.startswith("é" * 50)


# -- properties ------------------------------------------------------------------------------

labels_strategy = st.lists(
    st.one_of(st.text(max_size=300), st.sampled_from(HOSTILE)), unique=True, max_size=25
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=labels_strategy)
def test_property_folder_names_are_safe_and_distinct(labels: list[str]) -> None:
    assert_mapping_ok(labels, folder_names(labels))


@settings(max_examples=100, deadline=None)
@given(labels=labels_strategy)
def test_property_folders_can_be_created(
    tmp_path_factory: pytest.TempPathFactory, labels: list[str]
) -> None:
    names = list(folder_names(labels).values())
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        base = Path(tmp)
        assert_creatable(base / "root", names)
        assert os.listdir(base) == ["root"]


plain_label = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,30}[A-Za-z0-9]", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(plain_label, unique_by=str.casefold, max_size=25))
def test_property_plain_labels_keep_their_names(labels: list[str]) -> None:
    mapping = folder_names(labels)
    for label in labels:
        if label.split(".")[0].upper() not in CLASSIC_RESERVED and not label.startswith("__"):
            assert mapping[label] == label


# -- known gaps ------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["esc\x9b31mred", "nel\x85x", "\x80"])
def test_c1_control_characters_are_replaced(label: str) -> None:
    name = folder_names([label])[label]
    assert not any(unicodedata.category(char) == "Cc" for char in name), repr(name)


# Windows' full list (as in CPython 3.13 ntpath.isreserved): the console names, superscript-digit
# ports, and a device name followed by spaces before the extension.
@pytest.mark.parametrize("label", ["CONIN$", "conout$", "COM¹", "lpt².txt", "nul .txt", "CON .x"])
def test_all_windows_device_names_are_reserved(label: str) -> None:
    reserved = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
        f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789¹²³"
    }
    name = folder_names([label])[label]
    assert name.partition(".")[0].rstrip(" ").upper() not in reserved, repr(name)


@pytest.mark.parametrize("label", ["train", "test tube", "dev", "val 2", "my-eval", "Training_set"])
def test_split_keywords_never_stay_words_of_a_folder_name(label: str) -> None:
    """Hugging Face datasets would read such a folder as a split and drop the other classes."""
    keywords = {
        "train",
        "training",
        "validation",
        "valid",
        "dev",
        "val",
        "test",
        "testing",
        "eval",
        "evaluation",
    }
    folder = folder_names([label, "cat"])[label]
    words = set(re.split(r"[-._ 0-9]+", folder))
    assert not words & keywords, folder


@pytest.mark.parametrize(
    "label",
    [
        "00000_stats.json",
        "00012.tar",
        "00003.parquet",
        "overview.json",
        "labels.json",
        "croissant.json",
        "Report.html",
        "metadata.csv",
        "METADATA.JSONL",
    ],
)
def test_labels_named_like_flowdc_or_loader_files_get_other_folders(label: str) -> None:
    """A folder named 00000_stats.json would pass for a shard's commit marker."""
    folder = folder_names([label])[label]
    assert folder != label and folder.casefold() != label.casefold()


# -- labels ----------------------------------------------------------------------------------------
def test_labels_differing_only_in_surrounding_spaces_are_one_class(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """A hand-edited spreadsheet has 'Rosa canina ' beside 'Rosa canina': they were two classes
    (two folders, 'Rosa canina' and 'Rosa canina_<hash>'), splitting one species."""
    source = tmp_path / "urls.csv"
    labels = ["Rosa canina", "Rosa canina ", " Rosa canina", "Bellis\t", "Bellis", "  "]
    lines = [f"{fresh_server.url(f'img/{i}.jpg')},{label}" for i, label in enumerate(labels)]
    source.write_text("url,label\n" + "\n".join(lines) + "\n")

    result = flowdc.download(
        input=str(source),
        output=str(tmp_path / "ds"),
        label="label",
        output_format="imagefolder",
        **QUICK_RUN,
    )

    assert result.successful == 5 and result.failures == {"missing_label": 1}
    classes = json.loads((tmp_path / "ds" / "labels.json").read_text())
    assert [(c["label"], c["folder"], c["images"]) for c in classes] == [
        ("Bellis", "Bellis", 2),
        ("Rosa canina", "Rosa canina", 3),
    ]
    assert set(flowdc.results(tmp_path / "ds").column("label").to_pylist()) == {
        "Bellis",
        "Rosa canina",
        None,
    }
