"""The names of a ranking's columns that are not targets, and the check that keeps targets off them.

A ranking (`srscreen predict`) writes these columns, then each target and its `_std`, then `--hull`'s.
They live here, below both the trainer and the screening code, because a model's target names become
column names: training a target named like one of these makes a model whose column the ranking would
overwrite or refuse, so training refuses it first, before hours are spent (issue 24's review).
"""

from __future__ import annotations

from collections.abc import Iterable

from srscreen.errors import OptionError

FIXED_COLUMNS = ("rank", "id", "formula", "n_atoms")
NOTE_COLUMN = "hull_note"
# The columns `--hull` adds to a ranking.
HULL_COLUMNS = ("e_above_hull", "p_stable", NOTE_COLUMN)
RESERVED_COLUMNS = (*FIXED_COLUMNS, *HULL_COLUMNS)


def check_target_names(targets: Iterable[str]) -> None:
    """Refuse a target with no name (a blank column header would head its column) or named like a column
    the ranking writes itself."""
    targets = list(targets)
    blank = [t for t in targets if not t.strip() or t != t.strip()]
    if blank:
        raise OptionError(f"`target` {blank[0]!r}: a target needs a name without outer spaces")
    taken = [t for t in targets if t in RESERVED_COLUMNS]
    if taken:
        raise OptionError(f"`target` {taken[0]!r} is a column the ranking writes itself ({', '.join(RESERVED_COLUMNS)}); "
                          "rename that labels column")
