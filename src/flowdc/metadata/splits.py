"""Train/validation/test splits that do not leak: the assignment, on numpy arrays.

A *unit* is a set of samples that must share a split: samples linked by a group value (GBIF's
occurrence, an observer, a site), by the same image (the same sha256), or by `duplicate_of`
(a --dedupe duplicate names the stored sample it copies; the duplicate row itself is not stored,
but it links its own group to that sample). Units are the connected components of the graph of
rows whose edges join the rows of each link value, found by hooking and pointer jumping over
numpy arrays (memory: a few int32 per row; `benchmarks/splits.py` measures it).

Units are then stratified by class: each unit counts for its most common class; within a class
the units are ordered by a hash of the seed and the unit's smallest key (so a unit's place does
not depend on the other units, and a sample added later moves only units near a boundary) and
laid end to end; a unit goes to the split whose share of the class holds the unit's middle. A
class with at least as many units as there are splits has a unit in every split (a unit is moved
from the biggest split when the rule left one empty); a class with fewer goes whole to train.

`leaks` checks the result on its own: no link value may be in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NONE = -1
"""In a link array: the row has no value of this link (an empty group cell)."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class SplitRows:
    """The rows that take part in a split, in one order. Links are int64 value ids (NONE: no
    value); `stored` rows get a split, the others (--dedupe duplicates) only link."""

    keys: np.ndarray  # int64: the sample keys, as numbers
    classes: np.ndarray  # int64: class id of each row
    stored: np.ndarray  # bool
    links: Sequence[np.ndarray]  # int64 value ids per kind of link (sha256, each group column)
    duplicate_of: np.ndarray  # int64: the key a duplicate copies, or NONE


@dataclass(frozen=True)
class Assignment:
    split: np.ndarray  # int8 per row: index into the ratios, NONE for a row that is not stored
    unit: np.ndarray  # int64 per row: the unit's first row
    whole_to_train: np.ndarray  # int64: classes with fewer units than splits (all in train)
    units: int


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def connected(count: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Each node's component, named by its smallest node, for the edges left[i]-right[i].

    Each round hooks every root to the smallest root it shares an edge with, then jumps pointers
    until every node points at a root; edges inside one component are dropped. A productive
    round removes at least one root, so there are at most `count` rounds (a handful in practice).
    """
    index = np.int32 if count < 2**31 else np.int64  # half the memory of int64 below 2**31
    parent = np.arange(count, dtype=index)
    left, right = left.astype(index), right.astype(index)
    for _ in range(count + 1):
        root_left, root_right = parent[left], parent[right]
        apart = root_left != root_right
        if not apart.any():
            return parent
        left, right = left[apart], right[apart]
        low = np.minimum(root_left[apart], root_right[apart])
        high = np.maximum(root_left[apart], root_right[apart])
        del root_left, root_right, apart
        np.minimum.at(parent, high, low)  # a root only ever points at a smaller node: no cycle
        for _ in range(64):  # depth at most doubles down each jump: 64 is past any int64 count
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    raise AssertionError("connected components did not settle")  # unreachable, see docstring


def _star(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges from the first row of each value to the other rows of that value."""
    rows = np.flatnonzero(ids != NONE)
    order = np.argsort(ids[rows], kind="stable")  # rows of one value stay in row order
    rows, values = rows[order], ids[rows][order]
    first = np.r_[True, values[1:] != values[:-1]] if len(rows) else np.empty(0, bool)
    heads = rows[first][np.cumsum(first) - 1]
    return heads[~first], rows[~first]


def units_of(rows: SplitRows) -> np.ndarray:
    """Each row's unit: the first row of its connected component. Rows sharing a link value are
    joined to the first of them (a star, settled in one round), a duplicate to the row it
    copies."""
    count = len(rows.keys)
    lefts, rights = [], []
    for ids in rows.links:
        left, right = _star(ids)
        lefts.append(left)
        rights.append(right)
    copies = np.flatnonzero(rows.duplicate_of != NONE)
    if len(copies):
        order = np.argsort(rows.keys, kind="stable")
        at = np.minimum(np.searchsorted(rows.keys[order], rows.duplicate_of[copies]), count - 1)
        found = rows.keys[order][at] == rows.duplicate_of[copies]
        lefts.append(copies[found])
        rights.append(order[at[found]])
    left = np.concatenate(lefts) if lefts else np.empty(0, np.int64)
    right = np.concatenate(rights) if rights else np.empty(0, np.int64)
    return connected(count, left, right)


def _primary_class(unit: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct units, and each one's most common class (the smaller id on a tie)."""
    order = np.lexsort((classes, unit))
    pair_unit, pair_class = unit[order], classes[order]
    starts = np.flatnonzero(
        np.r_[True, (pair_unit[1:] != pair_unit[:-1]) | (pair_class[1:] != pair_class[:-1])]
    )
    counts = np.diff(np.r_[starts, len(order)])
    pair_unit, pair_class = pair_unit[starts], pair_class[starts]
    best = np.lexsort((pair_class, -counts, pair_unit))
    first = np.r_[True, pair_unit[best][1:] != pair_unit[best][:-1]]
    return pair_unit[best][first], pair_class[best][first]


def assign(rows: SplitRows, ratios: Sequence[float], seed: int) -> Assignment:
    """The split of every stored row (see the module's rule)."""
    unit = units_of(rows)
    split = np.full(len(rows.keys), NONE, dtype=np.int8)
    stored = np.flatnonzero(rows.stored)
    if not len(stored):
        return Assignment(split, unit, np.empty(0, np.int64), 0)
    units, unit_class = _primary_class(unit[stored], rows.classes[stored])
    sizes = np.bincount(np.searchsorted(units, unit[stored]), minlength=len(units))
    seed_mix = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        rank = _mix(rows.keys[units].astype(np.uint64) ^ seed_mix)
    order = np.lexsort((rank, unit_class))  # by class, then by hash: each class contiguous
    ordered_class, ordered_size = unit_class[order], sizes[order]
    starts = np.flatnonzero(np.r_[True, ordered_class[1:] != ordered_class[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    totals = np.add.reduceat(ordered_size, starts)
    ends = np.cumsum(ordered_size) - np.repeat(np.cumsum(totals) - totals, lengths)
    middle = (ends - ordered_size / 2) / np.repeat(totals, lengths)
    shares = np.asarray(ratios, dtype=np.float64)
    bounds = np.cumsum(shares)[:-1]
    chosen = np.searchsorted(bounds, middle, side="right").astype(np.int8)
    positive = np.flatnonzero(shares > 0)
    small = lengths < len(positive)
    chosen[np.repeat(small, lengths)] = 0
    _cover(chosen, ordered_size, starts, lengths, small, positive, len(shares))
    unit_split = np.empty(len(units), dtype=np.int8)
    unit_split[order] = chosen
    split[stored] = unit_split[np.searchsorted(units, unit[stored])]
    return Assignment(split, unit, ordered_class[starts[small]], len(units))


def _cover(
    chosen: np.ndarray,
    sizes: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    small: np.ndarray,
    positive: np.ndarray,
    width: int,
) -> None:
    """Give each class that has enough units one in every split with a share: a split the rule
    left empty takes the smallest unit of the split with the most units (the one nearest to it
    when sizes tie). Only classes that need it are walked, in Python."""
    class_of = np.repeat(np.arange(len(starts)), lengths)
    counts = np.bincount(class_of * width + chosen, minlength=len(starts) * width)
    counts = counts.reshape(len(starts), width)
    lacking = np.flatnonzero(~small & (counts[:, positive] == 0).any(axis=1))
    for klass in lacking:
        begin, end = starts[klass], starts[klass] + lengths[klass]
        part, part_sizes = chosen[begin:end], sizes[begin:end]
        have = counts[klass].copy()
        for empty in positive[have[positive] == 0]:
            donor = int(np.argmax(have))
            members = np.flatnonzero(part == donor)
            smallest = members[part_sizes[members] == part_sizes[members].min()]
            taken = smallest[-1] if donor < empty else smallest[0]
            part[taken] = empty
            have[donor] -= 1
            have[empty] += 1


def leaks(rows: SplitRows, split: np.ndarray) -> list[int]:
    """For each kind of link, how many of its values are in more than one split: the split is
    leak-free when every count is 0. A duplicate row counts in the split of the sample it copies
    (so its group must be there too); a row with no split is left out."""
    split = split.copy()
    copies = np.flatnonzero(~rows.stored & (rows.duplicate_of != NONE))
    if len(copies):
        order = np.argsort(rows.keys, kind="stable")
        at = np.minimum(
            np.searchsorted(rows.keys[order], rows.duplicate_of[copies]), len(order) - 1
        )
        found_copy = rows.keys[order][at] == rows.duplicate_of[copies]
        split[copies[found_copy]] = split[order[at[found_copy]]]
    found = []
    for ids in rows.links:
        keep = (ids != NONE) & (split != NONE)
        values, where = ids[keep], split[keep]
        order = np.lexsort((where, values))
        values, where = values[order], where[order]
        differ = (values[1:] == values[:-1]) & (where[1:] != where[:-1])
        found.append(len(np.unique(values[1:][differ])))
    return found
