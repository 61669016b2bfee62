"""Cell geometry shared by the readers (sanity checks) and the graph builder (search radius).

Every reader checks the cell it hands on with `lattice_fault` (and a CIF's written numbers with
`cell_parameters_fault` first), so no format can turn an impossible cell into a default one.
Plain floats throughout: these run once per structure, on the ~5,000 structures/s CIF path.
"""

from __future__ import annotations

import math

# A cell whose volume is below this fraction of a*b*c has (nearly) coplanar vectors: |sin| < 1e-6,
# far below any crystal's (~0.1 for the most skewed reduced cells) and above rounding (~1e-8).
MIN_SKEW = 1e-6
# Below this volume per atom no crystal exists (the densest solids have ~5 Å^3 per atom).
MIN_VOLUME_PER_ATOM = 0.1
_AXES = ("a", "b", "c")
_ANGLES = ("alpha", "beta", "gamma")


def cell_volume(lattice: list[list[float]]) -> float:
    """Volume of a cell given as three lattice rows in nested lists, in Å^3.

    Plain floats rather than np.linalg.det, which costs ~10 µs a call: this runs once per structure.
    """
    (a, b, c), (d, e, f), (g, h, i) = lattice
    return abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))


def lattice_fault(lattice: list[list[float]], n_atoms: int) -> str | None:
    """Why three lattice rows (nested lists, Å) are not a usable cell for `n_atoms` atoms; None if they are.

    Non-finite numbers, a zero-length vector, coplanar vectors (volume below `MIN_SKEW` of a*b*c)
    and a volume below `MIN_VOLUME_PER_ATOM` per atom are faults; the reasons are one line.
    Plain arithmetic first (~1 µs); the reason is worked out only for a bad cell.
    """
    try:
        (a, b, c), (d, e, f), (g, h, i) = lattice
        la = math.sqrt(a * a + b * b + c * c)
        lb = math.sqrt(d * d + e * e + f * f)
        lc = math.sqrt(g * g + h * h + i * i)
        volume = abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))
    except (TypeError, ValueError):
        return "lattice is not a 3x3 matrix of numbers"
    # NaN fails every comparison, so a non-finite lattice falls through to the reasons below.
    if volume >= MIN_SKEW * la * lb * lc and volume >= MIN_VOLUME_PER_ATOM * n_atoms and volume < math.inf:
        return None
    if not all(math.isfinite(x) for row in lattice for x in row):
        return "non-finite lattice (NaN or infinite cell vector component)"
    if not (la or lb or lc):
        return "no cell (the lattice is all zeros)"
    for axis, length in zip(_AXES, (la, lb, lc)):
        if not length > 0.0:
            return f"degenerate cell (lattice vector {axis} has zero length)"
    if not volume >= MIN_SKEW * la * lb * lc:
        return f"degenerate cell (lattice vectors are coplanar: volume {volume:.3g} Å^3)"
    if not volume < math.inf:
        return "cell too large (volume overflows)"
    return f"degenerate cell (volume {volume:.3g} Å^3 for {n_atoms} atoms)"


def cell_parameters_fault(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> str | None:
    """Why cell lengths (Å) and angles (degrees) describe no cell; None if they make one.

    Lengths must be finite and positive, angles strictly between 0 and 180 degrees, and the three
    angles must close a parallelepiped: the metric tensor's determinant, (V / abc)^2 =
    1 - cos²α - cos²β - cos²γ + 2 cosα cosβ cosγ, must exceed MIN_SKEW² (so each angle is below the
    sum of the other two and the three sum to less than 360°).
    """
    if 0.0 < a < math.inf and 0.0 < b < math.inf and 0.0 < c < math.inf:
        if 0.0 < alpha < 180.0 and 0.0 < beta < 180.0 and 0.0 < gamma < 180.0:
            ca, cb, cg = math.cos(math.radians(alpha)), math.cos(math.radians(beta)), math.cos(math.radians(gamma))
            if 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg > MIN_SKEW * MIN_SKEW:
                return None
            return (
                f"cell angles alpha={alpha:g}° beta={beta:g}° gamma={gamma:g}° make no cell "
                "(each angle must be below the sum of the other two, all three below 360°)"
            )
        name, value = next((n, x) for n, x in zip(_ANGLES, (alpha, beta, gamma)) if not 0.0 < x < 180.0)
        return f"cell angle {name} = {value:g}°: angles must be strictly between 0° and 180°"
    name, value = next((n, x) for n, x in zip(_AXES, (a, b, c)) if not 0.0 < x < math.inf)
    return f"cell length {name} = {value:g} Å: lengths must be positive and finite"
