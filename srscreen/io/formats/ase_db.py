"""ASE databases (.db): rows read by id range with ase.db; rows without a periodic cell are failures.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from srscreen.errors import one_line
from srscreen.io.parsed import ParseFailure, Parsed, ReadError, check_lattice, checked


def parse_ase_db_rows(path: str, stem: str, first_id: int, last_id: int,
                      id_key: str | None = None) -> Iterator[Parsed | ParseFailure]:
    """Rows `first_id`..`last_id` of an ASE database; ids `stem:<row id>`, or the row's `id_key` value."""
    import ase.db

    try:
        db = ase.db.connect(path, type="db", create_indices=False, use_lock_file=False)
        rows = db.select(f"id>={first_id},id<={last_id}")
        for row in rows:
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
                yield checked(name, cell, frac, row.numbers)
            except ReadError as e:
                yield ParseFailure(name, str(e))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                yield ParseFailure(name, f"unusable ASE row: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - sqlite and ase raise many types on a damaged file
        yield ParseFailure(f"{stem}:{first_id}", f"unreadable ASE database: {one_line(e)}")
