"""Per-element input features: CGCNN's 92-value one-hot table, rebuilt from cited data.

CGCNN (Xie & Grossman, PRL 120, 145301, 2018) describes each element by nine
one-hot segments. Their layout, read off the reference ``atom_init.json``:

=========================  ====  ==========================================
segment                    size  categories
=========================  ====  ==========================================
group                        19  0 (f-block: La-Yb, Ac-No), 1..18
period                        7  1..7
electronegativity            10  Pauling, 0.5..4.0, width 0.35
covalent radius              10  pm, 25..250, width 22.5
valence electrons            12  1..12
first ionisation energy      10  ln(eV), 1.3..3.3, width 0.2
electron affinity            10  eV, -3.0..3.7, width 0.67
block                         4  s, p, d, f
atomic volume                10  ln(cm^3/mol), 1.5..4.3, width 0.28
=========================  ====  ==========================================

A continuous value goes to bin ``floor((x - lo) / (hi - lo) * n)``, clipped to
the end bins. Values on a bin edge land where this float arithmetic puts them,
as in the reference (Si and Cu at electronegativity 1.90 fall in the lower bin,
Mn at 1.55 in the upper one).

Data sources (this project computes the table; it does not copy the reference):

* pymatgen ``Element`` data (``pymatgen/core/periodic_table.json``): group, row,
  Pauling electronegativity ``X``, first of ``Ionization energies`` (eV),
  ``Electron affinity`` (eV), ``Molar volume`` (cm^3/mol) and
  ``full_electronic_structure``.
* ``ase.data.covalent_radii``: Cordero et al., "Covalent radii revisited",
  Dalton Trans. 2008, 2832 (doi:10.1039/B801115J); it covers Z <= 96.

Derived quantities: group 0 and block f for La-Yb and Ac-No (Lu and Lr are
group 3, as in the reference); He is s-block. Valence electrons are the
electrons of the s subshell with the highest n, plus the outermost p subshell
(p-block) or the outermost d subshell (d-block); f electrons are not counted.
For Pd (4d10 5s0) this gives 4s2 + 4d10 = 12, which is also the reference's value.

A segment whose datum is missing is all zeros: electronegativity of He, Ne, Ar;
atomic volume of At, Fr, Fm; covalent radius of Bk, Cf, Es, Fm (Z > 96). A
negative electron affinity (unbound anion; pymatgen's values there are mostly
estimates) is treated as missing too: the reference has no affinity for He, Mg,
Mn, Zn, Kr, Cd, Hg, Rn, ... (though it does bin Be and N at negative values).
Keeping pymatgen's negative values would drop electron-affinity agreement to 61.

Agreement with the reference ``atom_init.json`` (Z = 1..100; measured by
``tests/test_elements.py``): 23/100 elements have an identical 92-vector.
Per segment: group 100, period 100, electronegativity 80, covalent radius 43,
valence electrons 100, ionisation energy 100, electron affinity 75, block 100,
atomic volume 80. The differences come from the data: the reference's radii
look like Pyykko & Atsumi's (2009) single-bond radii rather than Cordero's, its
gas-phase atomic volumes are larger, and it lacks electronegativity/affinity
data for several lanthanides and actinides that pymatgen now has.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
from ase.data import covalent_radii
from pymatgen.core.periodic_table import Element

from srscreen.errors import InputError

FEATURE_LENGTH = 92
BUILTIN_TABLE_NAME = "cgcnn92-srscreen"
MAX_Z = 100  # last element of the built-in table, as in the reference
_LOADABLE_MAX_Z = 118

SEGMENTS: tuple[tuple[str, int], ...] = (
    ("group", 19),
    ("period", 7),
    ("electronegativity", 10),
    ("covalent_radius", 10),
    ("valence_electrons", 12),
    ("first_ionization_energy", 10),
    ("electron_affinity", 10),
    ("block", 4),
    ("atomic_volume", 10),
)
"""(name, size) of each one-hot segment, in table order; sizes sum to 92."""

_CORDERO_MAX_Z = 96
_BLOCKS = "spdf"


def _bin(value: float | None, lo: float, hi: float, n: int, log: bool = False) -> int | None:
    """One-hot index of ``value`` in ``n`` equal bins over [lo, hi]; None stays missing."""
    if value is None:
        return None
    x = math.log(value) if log else value
    return min(max(math.floor((x - lo) / (hi - lo) * n), 0), n - 1)


def _valence_electrons(structure: list[tuple[int, str, int]], block: str) -> int:
    """Outermost s electrons, plus outermost p (p-block) or d (d-block) electrons."""
    n_max = max(n for n, _, _ in structure)
    count = sum(occ for n, l, occ in structure if l == "s" and n == n_max)
    if block in "pd":
        count += [occ for _, l, occ in structure if l == block][-1]
    return count


def _categories(z: int) -> tuple[int | None, ...]:
    """Index within each segment of SEGMENTS for element ``z`` (None: no data)."""
    el = Element.from_Z(z)
    data = el.data
    f_block = 57 <= z <= 70 or 89 <= z <= 102
    group = 0 if f_block else el.group
    block = "f" if f_block else "s" if group <= 2 or z == 2 else "p" if group >= 13 else "d"
    affinity = data.get("Electron affinity")
    return (
        group,
        el.row - 1,
        _bin(data.get("X"), 0.5, 4.0, 10),
        _bin(covalent_radii[z] * 100 if z <= _CORDERO_MAX_Z else None, 25.0, 250.0, 10),
        _valence_electrons(el.full_electronic_structure, block) - 1,
        _bin(data["Ionization energies"][0], 1.3, 3.3, 10, log=True),
        _bin(affinity if affinity is not None and affinity >= 0 else None, -3.0, 3.7, 10),
        _BLOCKS.index(block),
        _bin(data.get("Molar volume"), 1.5, 4.3, 10, log=True),
    )


@functools.lru_cache(maxsize=1)
def cgcnn_feature_table() -> np.ndarray:
    """Built-in (101, 92) float32 table; row Z is element Z, row 0 unused (zeros).

    Cached because the featurizer asks for it per structure; treat it as read-only.
    """
    table = np.zeros((MAX_Z + 1, FEATURE_LENGTH), dtype=np.float32)
    for z in range(1, MAX_Z + 1):
        offset = 0
        for (_, size), index in zip(SEGMENTS, _categories(z)):
            if index is not None:
                table[z, offset + index] = 1.0
            offset += size
    table.flags.writeable = False
    return table


def load_atom_features(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an original CGCNN ``atom_init.json`` ({"Z": [floats]}) as a (max_Z+1, F) table.

    Lets a model trained with the original features be reproduced exactly; rows of
    absent elements are zeros. Raises InputError (a ValueError) naming the file on malformed input.
    """
    path = Path(path)

    def fail(reason: str) -> InputError:
        return InputError(f"{path}: invalid atom feature file: {reason}")

    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"cannot read JSON ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise fail("expected a non-empty JSON object mapping atomic number to a vector")
    rows: dict[int, np.ndarray] = {}
    for key, vector in raw.items():
        if not (key.isascii() and key.isdigit() and 1 <= int(key) <= _LOADABLE_MAX_Z):
            raise fail(f"key {key!r} is not an atomic number 1..{_LOADABLE_MAX_Z}")
        try:
            rows[int(key)] = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise fail(f"vector for Z={key} is not a list of numbers") from exc
    lengths = {v.shape for v in rows.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise fail(f"vectors differ in length or are not flat (shapes {sorted(lengths)})")
    if next(iter(lengths)) == (0,):  # every structure then failed as 'element Na has no features'
        raise fail("the vectors are empty")
    bad = [z for z, v in rows.items() if not (np.abs(v) <= np.finfo(np.float32).max).all()]
    if bad:
        raise fail(f"non-finite or out-of-float32-range values for Z={min(bad)}")
    table = np.zeros((max(rows) + 1, next(iter(lengths))[0]), dtype=np.float32)
    for z, vector in rows.items():
        table[z] = vector
    return table


def table_id(table: np.ndarray) -> str:
    """Short content hash of a feature table, stored with shards and models to catch mismatches."""
    array = np.ascontiguousarray(table, dtype=np.float32)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def supported_numbers(table: np.ndarray) -> np.ndarray:
    """Boolean mask over atomic numbers: True where the table has a nonzero feature row."""
    return np.any(table != 0, axis=1)
