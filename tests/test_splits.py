"""Splits that do not leak (flowdc split, download --split).

The assignment (metadata/splits.py) is checked with hypothesis-generated groups, identical
images, --dedupe duplicates and labels against an independent union-find written here: no group
or image spans two splits, every stored sample has exactly one split, a seed gives one result,
classes are covered or go whole to train, ratios are met for large classes. Then the command
and the API on real downloads from the test server: the split files, the leakage check in
report.html, and the layouts loaded by webdataset, Hugging Face `datasets` and mlcroissant.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.core.errors import FlowDCError
from flowdc.core.split_ratios import parse_ratios
from flowdc.metadata.splits import NONE, SplitRows, assign, connected, leaks

RATIOS = [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.5), (0.7, 0.0, 0.3), (1 / 3, 1 / 3, 1 / 3)]


# -- the assignment, on generated rows ---------------------------------------------------------
@st.composite
def split_rows(draw: st.DrawFn) -> SplitRows:
    """Rows that start unlinked (each its own image, no group), then get links: rows set to the
    image of another row, put in groups (an occurrence) and in a second kind of group (an
    observer), so that links chain across rows and kinds; about one row in six a --dedupe
    duplicate of a stored row."""
    count = draw(st.integers(1, 120))
    row = st.integers(0, count - 1)
    keys = np.array(sorted(draw(st.sets(st.integers(0, 10**9), min_size=count, max_size=count))))
    classes = np.array(draw(st.lists(st.integers(0, 5), min_size=count, max_size=count)))
    sha = np.arange(count)
    for target, source in draw(st.lists(st.tuples(row, row), max_size=count // 3)):
        sha[target] = sha[source]
    links = [sha]
    for kinds in (count // 8 + 1, 3):
        group = np.full(count, NONE, dtype=np.int64)
        for member, value in draw(st.lists(st.tuples(row, st.integers(0, kinds)), max_size=count)):
            group[member] = value
        links.append(group)
    stored = np.array(draw(st.lists(st.integers(0, 5), min_size=count, max_size=count))) > 0
    stored[0] = True
    duplicate_of = np.full(count, NONE, dtype=np.int64)
    stored_keys = keys[stored]
    for copy in np.flatnonzero(~stored):
        duplicate_of[copy] = stored_keys[draw(st.integers(0, len(stored_keys) - 1))]
    return SplitRows(keys, classes, stored, links, duplicate_of)


def _expected_units(rows: SplitRows) -> list[int]:
    """Each row's unit by a plain union-find, independent of the numpy one."""
    parent = list(range(len(rows.keys)))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    row_of = {int(key): row for row, key in enumerate(rows.keys)}
    for ids in rows.links:
        first: dict[int, int] = {}
        for row, value in enumerate(ids.tolist()):
            if value != NONE:
                union(row, first.setdefault(value, row))
    for row, key in enumerate(rows.duplicate_of.tolist()):
        if key != NONE and key in row_of:
            union(row, row_of[key])
    return [find(row) for row in range(len(parent))]


def _primary(rows: SplitRows, units: list[int]) -> dict[int, int]:
    """unit -> its most common class among its stored rows (the smaller class on a tie)."""
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for row, unit in enumerate(units):
        if rows.stored[row]:
            counts[unit][int(rows.classes[row])] += 1
    return {u: min(c, key=lambda k: (-c[k], k)) for u, c in counts.items()}


@settings(max_examples=300, deadline=None)
@given(rows=split_rows(), ratios=st.sampled_from(RATIOS), seed=st.integers(0, 2**32))
def test_no_group_or_image_spans_two_splits_and_each_stored_sample_has_one(
    rows: SplitRows, ratios: tuple[float, ...], seed: int
) -> None:
    made = assign(rows, ratios, seed)
    split = made.split.tolist()
    positive = {i for i, share in enumerate(ratios) if share > 0}
    for row, value in enumerate(split):
        assert (value in positive) if rows.stored[row] else value == NONE
    units = _expected_units(rows)
    splits_of_unit: dict[int, set[int]] = defaultdict(set)
    for row, unit in enumerate(units):
        if rows.stored[row]:
            splits_of_unit[unit].add(split[row])
    assert all(len(found) == 1 for found in splits_of_unit.values())
    # the direct statement: no link value (sha256, group) in two splits; duplicates count in
    # the split of the sample they copy
    split_of_key = {int(k): s for k, s in zip(rows.keys, split, strict=True)}
    effective = [
        split_of_key.get(int(rows.duplicate_of[row]), NONE) if not rows.stored[row] else s
        for row, s in enumerate(split)
    ]
    for ids in rows.links:
        seen: dict[int, set[int]] = defaultdict(set)
        for value, s in zip(ids.tolist(), effective, strict=True):
            if value != NONE and s != NONE:
                seen[value].add(s)
        assert all(len(found) == 1 for found in seen.values())
    assert leaks(rows, made.split) == [0, 0, 0]
    assert made.units == len(splits_of_unit)


@settings(max_examples=200, deadline=None)
@given(rows=split_rows(), ratios=st.sampled_from(RATIOS), seed=st.integers(0, 2**32))
def test_a_class_is_in_every_split_or_whole_in_train(
    rows: SplitRows, ratios: tuple[float, ...], seed: int
) -> None:
    made = assign(rows, ratios, seed)
    units = _expected_units(rows)
    primary = _primary(rows, units)
    unit_split = {units[row]: int(made.split[row]) for row in np.flatnonzero(rows.stored)}
    per_class: dict[int, list[int]] = defaultdict(list)
    for unit, klass in primary.items():
        per_class[klass].append(unit_split[unit])
    positive = {i for i, share in enumerate(ratios) if share > 0}
    small = set(made.whole_to_train.tolist())
    for klass, splits in per_class.items():
        if len(splits) < len(positive):
            assert set(splits) == {0} and klass in small
        else:
            assert set(splits) == positive and klass not in small


@settings(max_examples=100, deadline=None)
@given(rows=split_rows(), ratios=st.sampled_from(RATIOS), seed=st.integers(0, 2**32))
def test_the_same_seed_gives_the_same_split(
    rows: SplitRows, ratios: tuple[float, ...], seed: int
) -> None:
    first, again = assign(rows, ratios, seed), assign(rows, ratios, seed)
    assert first.split.tolist() == again.split.tolist()


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(50, 400), min_size=1, max_size=6),
    ratios=st.sampled_from(RATIOS),
    seed=st.integers(0, 2**32),
    pairs=st.integers(0, 20),
)
def test_ratios_are_met_for_large_classes(
    sizes: list[int], ratios: tuple[float, ...], seed: int, pairs: int
) -> None:
    """Classes of 50 to 400 samples, some in pairs (two photos of one occurrence): each split
    holds its share of each class to within a unit."""
    classes = np.repeat(np.arange(len(sizes)), sizes)
    count = len(classes)
    group = np.full(count, NONE, dtype=np.int64)
    group[: 2 * pairs] = np.arange(2 * pairs) // 2  # rows 0-1, 2-3, ... share an occurrence
    rows = SplitRows(
        keys=np.arange(count, dtype=np.int64) * 7,
        classes=classes,
        stored=np.ones(count, dtype=bool),
        links=[np.arange(count), group],
        duplicate_of=np.full(count, NONE, dtype=np.int64),
    )
    made = assign(rows, ratios, seed)
    for klass, size in enumerate(sizes):
        got = np.bincount(made.split[classes == klass], minlength=len(ratios))
        for index, share in enumerate(ratios):
            assert abs(got[index] - share * size) <= 2, (klass, got.tolist(), size)


@pytest.mark.parametrize(("samples", "expected"), [(2, [0, 0]), (3, [0, 1, 2])])
def test_a_small_class_goes_to_train_until_each_split_can_have_a_sample(
    samples: int, expected: list[int]
) -> None:
    """0.8/0.1/0.1 puts no sample of 3 in validation by shares alone; each split gets one."""
    rows = SplitRows(
        keys=np.arange(samples, dtype=np.int64),
        classes=np.zeros(samples, dtype=np.int64),
        stored=np.ones(samples, dtype=bool),
        links=[np.arange(samples)],
        duplicate_of=np.full(samples, NONE, dtype=np.int64),
    )
    for seed in range(5):
        made = assign(rows, RATIOS[0], seed)
        assert sorted(made.split.tolist()) == expected
        assert made.whole_to_train.tolist() == ([0] if samples < 3 else [])


def test_different_seeds_give_different_splits() -> None:
    count = 200
    rows = SplitRows(
        keys=np.arange(count, dtype=np.int64),
        classes=np.zeros(count, dtype=np.int64),
        stored=np.ones(count, dtype=bool),
        links=[np.arange(count)],
        duplicate_of=np.full(count, NONE, dtype=np.int64),
    )
    assert assign(rows, RATIOS[0], 1).split.tolist() != assign(rows, RATIOS[0], 2).split.tolist()


def test_connected_components_of_a_long_chain_settle() -> None:
    """A chain whose nodes are numbered against it (each node's smaller neighbour is far away):
    the worst case of hooking to the smaller root, still a few rounds."""
    count = 100_000
    order = np.random.default_rng(0).permutation(count)
    labels = connected(count, order[:-1], order[1:])
    assert (labels == 0).all()


# -- ratios ------------------------------------------------------------------------------------
def test_ratios_parse_two_or_three_shares_or_percentages() -> None:
    assert parse_ratios("0.8,0.1,0.1") == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert parse_ratios("0.9, 0.1") == {"train": 0.9, "test": 0.1}
    assert parse_ratios("80,10,10") == {"train": 0.8, "validation": 0.1, "test": 0.1}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0.8,0.1", "sum to 0.9"),
        ("a,b", "not numbers"),
        ("1", "give 2 or 3"),
        ("0,0.5,0.5", "train's above 0"),
        ("0.9,-0.1,0.2", "0 or more"),
    ],
)
def test_bad_ratios_say_what_to_give(value: str, says: str) -> None:
    with pytest.raises(FlowDCError, match=says) as error:
        parse_ratios(value)
    assert "0.8,0.1,0.1" in str(error.value) and "\n" not in str(error.value)
