"""Energy above the convex hull against a reference set of formation energies.

A `ReferenceHull` holds (composition, formation energy per atom) rows. Formation energies are relative
to the elements, so every element of the reference sits at 0 eV/atom by definition (rows of pure
elements are not needed and are not used as hull points). For a chemical system (a set of elements) the
hull is pymatgen's `PhaseDiagram` of every reference row whose elements are a subset of it, built once
and kept (as the planes of its facets) in a per-system LRU cache. The hull energy of a composition x is
then the highest of the facet planes at x (the lower hull is convex, and each facet's plane supports it),
so a whole system's rows are evaluated with one matrix product. Compositions repeat a lot in
screening output, so hull energies are also cached per formula string.

`e_above_hull = Ef - E_hull(x)`, in eV/atom: positive above the hull, 0 on it, negative for a predicted
Ef below the reference hull (a candidate more stable than every known phase). A row that cannot be
placed (unparseable formula, an element no reference row contains) gets NaN and a one-line note;
nothing raises.

    hull = default_reference()                       # the shipped MP reference, see reference_hull.py
    e, notes = hull.e_above_hull(["Fe2O3", "LiFePO4"], np.array([-1.70, -2.50]))
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import warnings
from collections import OrderedDict
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram, get_facets
from pymatgen.core import Composition, Element

from srscreen.data.labels import LABEL_LIMIT
from srscreen.errors import SrscreenError
from srscreen.io.text_file import binary_kind

FORMULA_COLUMNS = ("formula", "composition", "reduced_formula", "pretty_formula", "formula_pretty")
EF_COLUMNS = ("formation_energy_per_atom", "e_form", "e_form_per_atom", "ef", "e_f", "formation_energy")
ID_COLUMNS = ("material_id", "id")
DEFAULT_REFERENCE = "data_files/mp_reference.csv.gz"  # inside the srscreen package
_TOL = 1e-11  # pymatgen's formation_energy_tol: only rows below this are hull points
# How far below 0 a row of one element may lie (numerical noise of a user's own calculations); the 71
# elemental rows of the shipped reference are all >= 0, and total energies per atom lie eV below.
ELEMENT_SLACK = 0.01


class ReferenceFileError(SrscreenError):
    """A reference file that cannot be used; the message is one line naming the file (and line)."""


class _Planes:
    """The lower hull of one chemical system as facet planes: E_hull(x) = max_f x . coef[f]."""

    __slots__ = ("coef",)

    def __init__(self, coef: np.ndarray):
        self.coef = coef  # (facets, elements), elements in sorted symbol order

    def energy(self, fractions: np.ndarray) -> np.ndarray:
        return (fractions @ self.coef.T).max(axis=1)


class ReferenceHull:
    """Reference formation energies (eV/atom) and the hulls of the chemical systems asked for.

    `rows` are (formula or Composition, Ef per atom). For each reduced composition the lowest Ef is
    kept. `max_systems` bounds the per-system cache (each entry is a small array of facet planes).
    """

    def __init__(self, rows: Iterable[tuple[str | Composition, float]], *, source: str = "reference",
                 max_systems: int = 65536, max_formulas: int = 2_000_000):
        self.source = source
        self.max_systems = max_systems
        self.max_formulas = max_formulas
        self.elements: set[str] = set()
        self._lowest: dict[str, tuple[Composition, float]] = {}  # reduced formula -> (composition, Ef)
        with warnings.catch_warnings():  # pymatgen warns about elements without an electronegativity (He, ...)
            warnings.simplefilter("ignore", UserWarning)
            self._add(rows)
        grouped: dict[frozenset[str], list[tuple[Composition, float]]] = {}
        for comp, ef in self._lowest.values():
            if len(comp.elements) > 1 and ef < -_TOL:  # only these can be hull points (as in PhaseDiagram)
                grouped.setdefault(frozenset(el.symbol for el in comp.elements), []).append((comp, ef))
        # per system: its symbols (sorted), the atomic fractions of its rows over them, and their Ef
        self._by_system: dict[frozenset[str], tuple[list[str], np.ndarray, np.ndarray]] = {}
        for system, members in grouped.items():
            symbols = sorted(system)
            fractions = np.array([[c.get_atomic_fraction(Element(s)) for s in symbols] for c, _ in members])
            self._by_system[system] = (symbols, fractions, np.array([ef for _, ef in members]))
        self._systems: OrderedDict[frozenset[str], _Planes] = OrderedDict()
        self._formulas: dict[str, tuple[float, str | None]] = {}
        self.systems_built = 0  # phase diagrams built so far (a system evicted and asked again counts twice)

    def _add(self, rows: Iterable[tuple[str | Composition, float]]) -> None:
        source = self.source
        for formula, ef in rows:
            comp = formula if isinstance(formula, Composition) else Composition(formula)
            ef = float(ef)
            if not math.isfinite(ef):
                raise ReferenceFileError(f"{source}: formation energy of {formula} is not a finite number ({ef})")
            if abs(ef) > LABEL_LIMIT:  # qhull fails on the hull's scale (-1e20 ended predict in a traceback)
                raise ReferenceFileError(f"{source}: formation energy of {comp.reduced_formula} is {ef:g} eV/atom, beyond "
                                         f"±{LABEL_LIMIT:,.0f} (a typing or unit mistake?)")
            if comp.num_atoms <= 0:
                raise ReferenceFileError(f"{source}: {formula!r} has no atoms")
            symbols = {el.symbol for el in comp.elements}
            if len(symbols) == 1 and ef < -ELEMENT_SLACK:  # total energies, say: every row would be nonsense
                raise ReferenceFileError(
                    f"{source}: {comp.reduced_formula} has formation energy {ef:g} eV/atom, below 0, where an "
                    "element's own is 0 (its other phases above): is this a file of total energies? Give formation "
                    "energies per atom")
            self.elements |= symbols
            key = comp.reduced_formula
            if key not in self._lowest or ef < self._lowest[key][1]:
                self._lowest[key] = (comp.reduced_composition, ef)

    def __len__(self) -> int:
        return len(self._lowest)

    def rows(self) -> list[tuple[str, float]]:
        """(reduced formula, lowest Ef) of each reference composition."""
        return [(key, ef) for key, (_, ef) in self._lowest.items()]

    # --- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_csv(cls, path: str | Path, *, structures: str | Path | None = None, **kwargs) -> ReferenceHull:
        """Read a reference CSV (optionally .gz; lines starting with # are comments).

        Columns: a formula (one of FORMULA_COLUMNS) and a formation energy per atom (one of EF_COLUMNS),
        names matched case-insensitively. A labels.csv written by `srscreen fetch-mp` (material_id,
        formation_energy_per_atom, ...) has no formula: the compositions are read from its structure
        files, `structures` or else the `structures/` folder next to it. Rows with an empty formation
        energy (fetch-mp's missing value) are skipped; anything else unusable raises ReferenceFileError.
        """
        path = Path(path)
        numbered = _read_lines(path)
        if not numbered:
            raise ReferenceFileError(f"{path}: empty reference file (no header)")
        header = [h.strip() for h in next(csv.reader([numbered[0][1]]))]
        lower = [h.lower() for h in header]
        ef_col = _pick(lower, EF_COLUMNS)
        formula_col = _pick(lower, FORMULA_COLUMNS)
        id_col = _pick(lower, ID_COLUMNS)
        if ef_col is None:
            raise ReferenceFileError(f"{path}: no formation energy column (columns: {', '.join(header)}; "
                                     f"expected one of {', '.join(EF_COLUMNS)})")
        folder = None
        if formula_col is None:
            folder = Path(structures) if structures is not None else path.parent / "structures"
            if id_col is None or not folder.is_dir():
                raise ReferenceFileError(
                    f"{path}: no formula or composition column (columns: {', '.join(header)}; expected one of "
                    f"{', '.join(FORMULA_COLUMNS)}), and no structures folder {folder} for its material ids")
        rows = []
        for (line, text), cells in zip(numbered[1:], csv.reader(t for _, t in numbered[1:])):
            if len(cells) != len(header):
                raise ReferenceFileError(f"{path} line {line}: {len(cells)} cells, the header has {len(header)}")
            ef_text = cells[ef_col].strip()
            if not ef_text:
                continue
            try:
                ef = float(ef_text)
            except ValueError:
                ef = math.nan
            if not math.isfinite(ef):
                raise ReferenceFileError(f"{path} line {line}: formation energy {ef_text!r} is not a number")
            if folder is not None:
                comp = _composition_from_files(path, line, folder, cells[id_col].strip())
            else:
                comp = _parse_formula(cells[formula_col])
                if isinstance(comp, str):
                    raise ReferenceFileError(f"{path} line {line}: {comp}")
            rows.append((comp, ef))
        if not rows:
            raise ReferenceFileError(f"{path}: no reference rows")
        return cls(rows, source=str(path), **kwargs)

    # --- lookups -----------------------------------------------------------------------------------

    def hull_energy(self, formulas: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """The reference hull's energy (eV/atom) at each formula's composition, and a note per row.

        NaN with a one-line note where it cannot be computed (unparseable formula, element missing from
        the reference); None elsewhere.
        """
        unique: dict[str, int] = {}
        inverse = np.fromiter((unique.setdefault(f, len(unique)) for f in formulas), dtype=np.int64, count=len(formulas))
        energy = np.empty(len(unique))
        notes: list[str | None] = [None] * len(unique)
        todo: dict[frozenset[str], list[tuple[int, str, np.ndarray]]] = {}
        for i, formula in enumerate(unique):
            known = self._formulas.get(formula)
            if known is not None:
                energy[i], notes[i] = known
                continue
            parsed = self._place(formula)
            if isinstance(parsed, str):
                energy[i], notes[i] = math.nan, parsed
                self._remember(formula, math.nan, parsed)
            else:
                todo.setdefault(parsed[0], []).append((i, formula, parsed[1]))
        for system, items in todo.items():
            values = self._planes(system).energy(np.stack([x for _, _, x in items]))
            for (i, formula, _), value in zip(items, values):
                energy[i] = value
                self._remember(formula, float(value), None)
        any_note = any(n is not None for n in notes)
        return energy[inverse], ([notes[i] for i in inverse] if any_note else [None] * len(inverse))

    def e_above_hull(self, formulas: Sequence[str], ef: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Ef - E_hull (eV/atom) for each row: negative below the reference hull, NaN where impossible.

        `ef` is (rows,) or, for an ensemble, (members, rows): the result has its shape, so the spread over
        members is `result.std(axis=0)` (the hull is fixed, so it equals the spread of Ef).
        """
        ef = np.asarray(ef, dtype=np.float64)
        if ef.shape[-1:] != (len(formulas),):
            raise ValueError(f"e_above_hull: {len(formulas)} formulas but formation energies of shape {ef.shape}")
        hull, notes = self.hull_energy(formulas)
        return ef - hull, notes

    # --- internals ---------------------------------------------------------------------------------

    def _remember(self, formula: str, energy: float, note: str | None) -> None:
        if len(self._formulas) >= self.max_formulas:
            self._formulas.clear()
        self._formulas[formula] = (energy, note)

    def _place(self, formula: str) -> tuple[frozenset[str], np.ndarray] | str:
        """(chemical system, atomic fractions in sorted symbol order), or a note."""
        comp = _parse_formula(formula)
        if isinstance(comp, str):
            return comp
        symbols = sorted(el.symbol for el in comp.elements)
        missing = [s for s in symbols if s not in self.elements]
        if missing:
            return f"no reference for element{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        return frozenset(symbols), np.array([comp.get_atomic_fraction(Element(s)) for s in symbols])

    def _planes(self, system: frozenset[str]) -> _Planes:
        planes = self._systems.get(system)
        if planes is not None:
            self._systems.move_to_end(system)
            return planes
        planes = self._build(system)
        self._systems[system] = planes
        if len(self._systems) > self.max_systems:
            self._systems.popitem(last=False)
        return planes

    def _subsystems(self, system: frozenset[str]) -> Iterable[frozenset[str]]:
        """Reference systems (with hull candidates) whose elements are all in `system`."""
        if 2 ** len(system) <= len(self._by_system):
            symbols = sorted(system)
            for k in range(2, len(symbols) + 1):
                for combo in itertools.combinations(symbols, k):
                    if (key := frozenset(combo)) in self._by_system:
                        yield key
        else:
            yield from (key for key in self._by_system if key <= system)

    def _build(self, system: frozenset[str]) -> _Planes:
        """Facet planes of the lower hull of `system`: PhaseDiagram's construction, on arrays.

        The points are those PhaseDiagram keeps (the elements at 0 and every composition below them,
        the lowest Ef of each), the same extra point above them all, pymatgen's own qhull call
        (`get_facets`) and PhaseDiagram's filter of upper and degenerate facets; only the Composition
        objects are left out, which made PhaseDiagram itself ~10x slower here.
        """
        symbols = sorted(system)
        column = {s: i for i, s in enumerate(symbols)}
        blocks, energies = [np.eye(len(symbols))], [np.zeros(len(symbols))]
        for key in self._subsystems(system):
            sub, fractions, ef = self._by_system[key]
            block = np.zeros((len(ef), len(symbols)))
            block[:, [column[s] for s in sub]] = fractions
            blocks.append(block)
            energies.append(ef)
        if len(blocks) == 1:  # one element, or nothing below the elements: the hull is the 0 plane
            return _Planes(np.zeros((1, len(symbols))))
        self.systems_built += 1
        fractions, energy = np.concatenate(blocks), np.concatenate(energies)
        dim = len(symbols)
        data = np.column_stack([fractions[:, 1:], energy])
        extra = np.full(dim, 1 / dim)
        extra[-1] = data.max() + 1
        data = np.vstack([data, extra])
        facets = np.asarray(get_facets(data))
        facets = facets[(facets != len(data) - 1).all(axis=1)]  # the upper hull: every facet with the extra point
        square = data[facets]
        square[:, :, -1] = 1
        facets = facets[np.abs(np.linalg.det(square)) > 1e-14]  # PhaseDiagram's test for degenerate facets
        coef = np.linalg.solve(fractions[facets], energy[facets][:, :, None])[:, :, 0]  # the plane through each
        return _Planes(coef)

    def phase_diagram(self, system: Iterable[str]) -> PhaseDiagram:
        """pymatgen's PhaseDiagram of `system` (element symbols) from this reference, e.g. for decompositions.

        Entry energies are Ef x atoms, so energies per atom are formation energies. Not cached.
        """
        system = frozenset(system)
        elements = [Element(s) for s in sorted(system)]
        entries = [PDEntry(Composition({el: 1}), 0.0) for el in elements]
        for key in self._subsystems(system):
            sub, fractions, ef = self._by_system[key]
            entries += [PDEntry(Composition(dict(zip(sub, x))), e) for x, e in zip(fractions, ef)]
        return PhaseDiagram(entries, elements=elements)


def _pick(columns: list[str], names: Sequence[str]) -> int | None:
    for name in names:
        if name in columns:
            return columns.index(name)
    return None


def _parse_formula(text: str) -> Composition | str:
    """A Composition, or a one-line reason it is not one."""
    if not isinstance(text, str):
        return f"cannot parse formula {text!r}"
    text = text.strip()
    try:
        comp = Composition(text)
        ok = comp.num_atoms > 0 and all(isinstance(el, Element) for el in comp.elements)
    except Exception:  # pymatgen raises ValueError, KeyError, ... for bad formulas
        ok = False
    return comp if ok else f"cannot parse formula {text!r}"


def _composition_from_files(path: Path, line: int, folder: Path, id_: str) -> Composition:
    from srscreen.screening.reference_hull import composition_of, structure_file

    found = structure_file(folder, id_)
    if found is None:
        raise ReferenceFileError(f"{path} line {line}: no structure file for {id_!r} in {folder}")
    try:
        return composition_of(found)
    except Exception as error:
        raise ReferenceFileError(f"{path} line {line}: cannot read {found.name}: {error}") from None


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank, non-comment lines with their 1-based line numbers."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # a graph or model file given by mistake: say what it is, not the codec's words
        raise ReferenceFileError(f"{path}: binary file{binary_kind(raw[:8])}, not a reference CSV "
                                 "(formula and formation_energy_per_atom columns)") from None
    except (OSError, EOFError) as error:
        raise ReferenceFileError(f"{path}: cannot read: {error}") from None
    return [(n, t) for n, t in enumerate(text.splitlines(), 1) if t.strip() and not t.startswith("#")]


@lru_cache(maxsize=1)
def default_reference() -> ReferenceHull:
    """The reference shipped with srscreen (package data `srscreen/data_files/mp_reference.csv.gz`)."""
    with resources.as_file(resources.files("srscreen").joinpath(DEFAULT_REFERENCE)) as path:
        return ReferenceHull.from_csv(path)
