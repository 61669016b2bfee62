"""Which labelled crystals train, validate and test: a seeded random split or a split file."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srscreen.data.labels import graph_index
from srscreen.errors import InputError
from srscreen.io.text_file import text_lines

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Positions (into the GraphSet) of the labelled crystals in each part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_split(ids: list[str], labelled: np.ndarray, seed: int, val_fraction: float, test_fraction: float,
               split_file: Path | None) -> Split:
    """A seeded random split of the labelled crystals, or the one a split file gives (`id,split` rows).

    The labelled ids are sorted before the permutation, so the split depends on the seed and the ids,
    not on the order of the graph file. `labelled` are the positions of the crystals with a label.
    """
    if split_file is not None:
        part_of = read_split_file(split_file)
        position = graph_index(ids)
        part_at = {position[id_]: part for id_, part in part_of.items() if id_ in position}
        parts = {name: [] for name in PARTS}
        for p in labelled:
            part = part_at.get(p)
            if part in parts:
                parts[part].append(p)
        return Split(*(np.array(parts[n], dtype=np.int64) for n in PARTS))
    order = labelled[np.argsort([ids[p] for p in labelled], kind="stable")]
    order = order[np.random.default_rng(seed).permutation(len(order))]
    n_test = int(round(test_fraction * len(order)))
    n_val = int(round(val_fraction * len(order)))
    return Split(train=order[n_test + n_val :], val=order[n_test : n_test + n_val], test=order[:n_test])


def read_split_file(path: Path) -> dict[str, str]:
    """id -> train/val/test from `id,split` rows; a first row naming another part is a header.

    Any other part name is refused: a typo ("validation", "Train") must not silently drop crystals.
    """
    part_of: dict[str, str] = {}
    for line_no, row in enumerate(csv.reader(text_lines(path, "a split file")), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise InputError(f"{path}:{line_no}: expected id,split (train, val or test)")
        id_, part = row[0].strip(), row[1].strip()
        if part not in PARTS:
            if line_no == 1:
                continue  # header
            raise InputError(f"{path}:{line_no}: split {part!r} of {id_} is not train, val or test")
        if part_of.setdefault(id_, part) != part:
            raise InputError(f"{path}:{line_no}: {id_} is given to {part} and, on an earlier line, to {part_of[id_]}")
    if not part_of:
        raise InputError(f"{path}: no id,split rows (train, val or test)")
    return part_of
