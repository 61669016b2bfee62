"""How crystal graphs are built: the neighbour rules, their stored names, and the settings that files record.

Two neighbour rules (`GraphSettings.rule`), both saved in graph files and model files; `neighbours`
documents what each builds. A graph file and a model file fit when their settings agree
(`data.graph_file.check_fits_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from srscreen.errors import InputError, OptionError, SrscreenError

IsolatedPolicy = Literal["fail", "pad"]
GraphRule = Literal["knn-ties", "cgcnn"]

# The name stored with each rule; bump it whenever the graph a rule builds changes.
ALGORITHMS: dict[str, str] = {"knn-ties": "knn-ties-v2", "cgcnn": "knn-pbc-v1"}
# What files written before the knn-ties rule (which record no neighbour algorithm) hold.
LEGACY_ALGORITHM = ALGORITHMS["cgcnn"]


def rule_of(algorithm: str) -> str | None:
    """The rule (`GraphSettings.rule`) that builds graphs of this stored algorithm name; None if unknown."""
    return next((rule for rule, name in ALGORITHMS.items() if name == algorithm), None)


class GraphError(SrscreenError):
    """A structure that has no valid crystal graph under the chosen policy (reason in the message)."""


# Å: beyond this the neighbour search's periodic images (~radius³ per atom) cost memory and time without end.
MAX_RADIUS = 30.0


@dataclass(frozen=True)
class GraphSettings:
    """How graphs are built. Saved in shard files and model files so a mismatch is caught."""

    radius: float = 8.0
    max_nbr: int = 12
    min_distance: float = 0.5
    on_isolated_atoms: IsolatedPolicy = "fail"
    rule: GraphRule = "knn-ties"
    tie_tolerance: float = 1e-4  # Å: neighbours this close to the max_nbr-th count as tied with it

    def __post_init__(self) -> None:
        if self.rule not in ALGORITHMS:
            raise OptionError(f"`rule` must be one of {', '.join(ALGORITHMS)}, not {self.rule!r}")
        if self.on_isolated_atoms not in ("fail", "pad"):
            raise OptionError(f"`on_isolated_atoms` must be 'fail' or 'pad', not {self.on_isolated_atoms!r}")
        # `not` of the comparison: NaN fails every comparison, so `nan <= 0` would let it through
        if not (math.isfinite(self.radius) and 0 < self.radius <= MAX_RADIUS):
            raise OptionError(f"`radius` must be a number of Å above 0 and at most {MAX_RADIUS:g} (the neighbour search "
                              f"grows as its cube; CGCNN's graphs use 8), not {self.radius}")
        if not (math.isfinite(self.tie_tolerance) and self.tie_tolerance >= 0):
            raise OptionError(f"`tie_tolerance` must be a finite number of Å, 0 or more, not {self.tie_tolerance}")
        if not (math.isfinite(self.min_distance) and self.min_distance >= 0):
            raise OptionError(f"`min_distance` must be a finite number of Å, 0 or more, not {self.min_distance}")
        if self.max_nbr < 1:
            raise OptionError(f"`max_nbr` must be at least 1, not {self.max_nbr}")

    @property
    def algorithm(self) -> str:
        return ALGORITHMS[self.rule]

    @classmethod
    def from_attrs(cls, attrs: dict) -> "GraphSettings":
        """The settings a model or graph file records (files from before the knn-ties rule: CGCNN's)."""
        algorithm = attrs.get("neighbour_algorithm", LEGACY_ALGORITHM)
        rule = rule_of(algorithm)
        if rule is None:
            raise InputError(f"unknown neighbour algorithm {algorithm!r} (this srscreen knows {', '.join(ALGORITHMS.values())})")
        return cls(radius=float(attrs["radius"]), max_nbr=int(attrs["max_nbr"]), rule=rule,
                   tie_tolerance=float(attrs.get("tie_tolerance", cls.tie_tolerance)))

    def as_attrs(self) -> dict[str, float | int | str]:
        """The settings that change the graph, as stored in files (policies are recorded apart)."""
        attrs: dict[str, float | int | str] = {
            "radius": float(self.radius), "max_nbr": int(self.max_nbr), "neighbour_algorithm": self.algorithm,
        }
        if self.rule == "knn-ties":
            attrs["tie_tolerance"] = float(self.tie_tolerance)
        return attrs
