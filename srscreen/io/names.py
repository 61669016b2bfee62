"""Names as srscreen records them: a file name that is not UTF-8 must neither stop a run nor be lost, and
no id may break the one-line-per-id output of `info --ids` and predict's CSV.

Python gives such a name (`bad\\xff.cif` on disk) as a string with a lone surrogate, which HDF5 (UTF-8
only) cannot store. Ids, sources and input keys hold instead the printable form, each byte that is not
UTF-8 written as `\\xNN`: the structure in `bad\\xff.cif` gets the id `bad\\xff`, and the same name gives
the same key on every run, so a rerun resumes. The file itself is still opened by its real name.
Control characters (a newline or tab in a file name or an entry's id, a terminal escape) are written
`\\xNN` the same way: `two\\nlines.cif` gets the id `two\\x0alines`, which `sort`, `awk` and a terminal
show as one plain line.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls: what splits a line or drives a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every byte that is not UTF-8 and every control character written as `\\xNN`
    (unchanged when it has neither)."""
    if text.isascii() and text.isprintable():
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name gives (a JSON "\ud800" escape, say)
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        shown = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", shown)
