"""Names as srscreen records them: a file name that is not UTF-8 must neither stop a run nor be lost.

Python gives such a name (`bad\\xff.cif` on disk) as a string with a lone surrogate, which HDF5 (UTF-8
only) cannot store. Ids, sources and input keys hold instead the printable form, each byte that is not
UTF-8 written as `\\xNN`: the structure in `bad\\xff.cif` gets the id `bad\\xff`, and the same name gives
the same key on every run, so a rerun resumes. The file itself is still opened by its real name.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every byte that is not UTF-8 written as `\\xNN` (unchanged when it is all UTF-8)."""
    if text.isascii():
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name gives (a JSON "\ud800" escape, say)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
