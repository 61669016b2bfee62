"""ASE databases (.db): rows read by id range with ase.db; rows without a periodic cell are failures.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from srscreen.errors import one_line
from srscreen.io.parsed import ParseFailure, Parsed, ReadError, check_lattice, checked


def parse_ase_db_rows(path: str, stem: str, first_id: int, last_id: int,
                      id_key: str | None = None) -> Iterator[Parsed | ParseFailure]:
    """Rows `first_id`..`last_id` of an ASE database; ids `stem:<row id>`, or the row's `id_key` value.
    A row ase.db cannot decode (a damaged blob) is a failure of its own, and the rows after it are read."""
    import ase.db

    after = first_id - 1  # the last row read
    try:
        db = ase.db.connect(path, type="db", create_indices=False, use_lock_file=False)
        while True:
            try:
                for row in db.select(f"id>{after},id<={last_id}", sort="id"):
                    after = row.id
                    yield _row(row, stem, id_key)
                return
            except Exception as e:  # noqa: BLE001 - ase raises many types on a damaged row: that row only
                bad = [r.id for r in db.select(f"id>{after},id<={last_id}", sort="id", limit=1, columns=["id"],
                                               include_data=False)]
                if not bad:
                    raise
                after = bad[0]
                yield ParseFailure(f"{stem}:{after}", f"unreadable ASE row {after}: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - sqlite and ase raise many types on a damaged file
        yield ParseFailure(f"{stem}:{after + 1}", f"unreadable ASE database: {one_line(e)}")


def _row(row, stem: str, id_key: str | None) -> Parsed | ParseFailure:
    name = f"{stem}:{row.id}"
    try:
        if id_key is not None:
            value = row.get(id_key)
            if value is None or value == "":
                raise ReadError(f"row {row.id} has no key {id_key!r} (--id-key)")
            name = str(value)
        if not np.asarray(row.pbc).all():
            raise ReadError("row has no periodic cell (pbc must be true along a, b and c)")
        cell = np.asarray(row.cell, dtype=np.float64)
        check_lattice(cell, len(row.numbers))  # before the inverse: a zero cell is a reason, not an error
        frac = np.asarray(row.positions, dtype=np.float64) @ np.linalg.inv(cell)
        return checked(name, cell, frac, row.numbers)
    except ReadError as e:
        return ParseFailure(name, str(e))
    except Exception as e:  # noqa: BLE001 - this row's own failure: nothing may escape to blame the row after it
        return ParseFailure(name, f"unusable ASE row: {one_line(e)}")
