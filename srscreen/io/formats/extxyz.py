"""extxyz: ASE; frames without a lattice are failures (a crystal graph needs periodicity). Where each
frame starts and ends is decided here once (`split_frames`), for the whole-file parser and for the
chunks `sources` cuts a large file into, so that a broken frame costs no frame after it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Iterator


from srscreen.errors import one_line
from srscreen.io.compression import too_large
from srscreen.io.parsed import ParseFailure, Parsed, ReadError, check_lattice, checked, isotope_reason

_MAX_VEC_LINES = 3  # plain xyz's lattice vectors (VEC1..VEC3) after the atoms, which ASE reads


class FrameFault(str):
    """Why the lines from one place in a file are not a frame (the line they start on named)."""


def parse_extxyz_frames(stem: str, text: str, first: int) -> Iterator[Parsed | ParseFailure]:
    """Structures from consecutive extxyz frames; frame numbers count from `first`, a broken frame
    (`split_frames`) taking one number."""
    import ase.io

    for frame, block in enumerate(split_frames(io.StringIO(text), max(len(text), 1)), start=first):
        id_ = f"{stem}:{frame}"
        if isinstance(block, FrameFault):
            yield ParseFailure(id_, block)
            continue
        try:
            atoms = ase.io.read(io.StringIO(block), format="extxyz")
            if not atoms.cell.array.any():
                raise ReadError('frame has no lattice (extxyz needs Lattice="..." and pbc="T T T")')
            if not atoms.pbc.all():
                pbc = " ".join("T" if p else "F" for p in atoms.pbc)
                raise ReadError(f'frame has no periodic lattice along a, b and c (pbc="{pbc}"; '
                                'a crystal graph needs pbc="T T T")')
            check_lattice(atoms.cell.array, len(atoms))  # before the inverse in get_scaled_positions
            yield checked(id_, atoms.cell.array, atoms.get_scaled_positions(wrap=False), atoms.numbers)
        except ReadError as e:
            yield ParseFailure(id_, str(e))
        except KeyError as e:  # ASE knows no D or T: the symbol is the key it missed
            isotope = isotope_reason(e.args[0]) if e.args and isinstance(e.args[0], str) else None
            yield ParseFailure(id_, isotope or f"invalid extxyz frame: {one_line(e)}")
        except Exception as e:  # noqa: BLE001 - ASE raises many types on malformed frames
            yield ParseFailure(id_, f"invalid extxyz frame: {one_line(e)}")


def split_frames(lines: Iterable[str | None], max_chars: int) -> Iterator[str]:
    """The text of each frame of an extxyz file in turn, or a `FrameFault` for lines that are not one,
    after which the file is read on from the next atom count: one broken frame (an unreadable count, or
    a count that says more or fewer atoms than the frame holds) never costs the frames after it.

    A frame is a count (a line holding one whole number, as ASE reads it), a comment line, that many
    atom lines (none of them a count), up to three VEC lines, then the next count or the end. `lines`
    are the file's lines, None for one over `max_chars` (read past, never held); no frame of more than
    `max_chars` is held either, whatever its count says (an endless line, a header of 10^12 atoms), and
    no frame is handed on that announces more atoms than it holds (ASE would read on for each)."""
    source = _Lines(lines)
    while (head := source.next_filled()) is not _END:
        start = source.number
        count = None if head is None else _atom_count(head)
        if count is None:
            what = f"a line {too_large(max_chars)}" if head is None else "extxyz frame does not start with an atom count"
            yield FrameFault(f"{what} (line {start}){source.skip_to_count()}")
            continue
        frame, size, taken, last_atom = [head], len(head), 0, None
        while taken < count + 1 and (line := source.next()) is not _END:
            if taken and line is not None and _atom_count(line) is not None:  # the next frame's count
                source.push(line)
                break
            taken += 1
            size += max_chars + 1 if line is None else len(line)
            if size <= max_chars:
                frame.append(line)
            if taken > 1:  # an atom line: what one looks like tells a longer frame from a broken next one
                last_atom = line
        if taken < count + 1:
            ends = "the file ends" if source.ended else f"line {source.number + 1} starts another frame"
            fault = f"the frame at line {start} announces {count} atoms, but {ends} after {max(taken - 1, 0)} of them"
            yield FrameFault(too_large(max_chars) if size > max_chars else fault)
            continue
        vec = 0
        while (after := source.next_filled()) is not _END and after is not None and after.lstrip().startswith("VEC") \
                and vec < _MAX_VEC_LINES:
            vec += 1
            size += len(after)
            frame.append(after)
        if not vec and last_atom is not None and after not in (_END, None) and _atom_count(after) is None \
                and len(after.split()) == len(last_atom.split()):  # another atom line: more atoms than it says
            yield FrameFault(f"the frame at line {start} announces {count} atoms, but line {source.number} goes on "
                             f"after them{source.skip_to_count()}")
            continue
        source.push(after)  # the next count, or a broken frame that the next round reports
        yield FrameFault(too_large(max_chars)) if size > max_chars else _ended("".join(frame))


def _ended(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _atom_count(line: str) -> int | None:
    """The number of atoms a frame's first line gives (one whole number, nothing else), else None."""
    text = line.strip()
    return int(text) if text.isascii() and text.isdigit() else None


_END = object()  # no line left


class _Lines:
    """A file's lines with their numbers (from 1), and one line put back."""

    def __init__(self, lines: Iterable[str | None]) -> None:
        self._lines = iter(lines)
        self._back: list[str | None | object] = []
        self.number = 0
        self.ended = False

    def next(self) -> str | None | object:
        """The next line (None for one over the limit), or _END."""
        if self._back:
            line = self._back.pop()
        else:
            line = next(self._lines, _END)
        if line is _END:
            self.ended = True
        else:
            self.number += 1
        return line

    def push(self, line: str | None | object) -> None:
        if line is not _END:
            self._back.append(line)
            self.number -= 1

    def next_filled(self) -> str | None | object:
        """The next line that is not blank, or _END."""
        while (line := self.next()) is not _END and line is not None and not line.strip():
            pass
        return line

    def skip_to_count(self) -> str:
        """Read up to the next frame's count (put back); say which lines that skipped."""
        first = self.number + 1
        while (line := self.next()) is not _END and (line is None or _atom_count(line) is None):
            pass
        self.push(line)
        return f"; lines {first - 1}-{self.number} skipped" if self.number >= first else ""
