"""Cut a large JSON array into the text of its elements, reading the file front to back.

Entry dumps (Materials Project or Alexandria `ComputedStructureEntry` lists, gigabytes once
uncompressed) are a top-level array, or an object whose "entries" key holds the array. The parent
process hands each element's text on to the workers unparsed; here each element is only checked
for well-formedness by the C JSON scanner, which then drops what it built. Memory holds one read
block and the element in progress, whatever the size of the file.
"""

from __future__ import annotations

import io
import json
from typing import Iterator

BLOCK_CHARS = 1 << 20
MAX_ELEMENT_CHARS = 256 << 20  # by default, an element larger than this is taken for a malformed file

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


class WholeDocument(str):
    """The whole top-level object of a file that is not an entries container (one structure)."""


class _Cursor:
    """A window on a text stream: `buf[pos:]` is what has not been consumed yet; `buf[anchor:]` is
    kept (when `anchor` is set) so that a value being scanned can be handed over whole."""

    def __init__(self, text: io.TextIOBase, block: int, max_chars: int) -> None:
        self.text, self.block, self.max_chars = text, block, max_chars
        self.buf, self.pos, self.eof = "", 0, False
        self.anchor: int | None = None

    def more(self) -> bool:
        """Read another block (at least as much as is held, so a huge element costs O(size))."""
        if self.eof:
            return False
        if self.anchor is not None and len(self.buf) - self.anchor > self.max_chars:  # a whole document held
            raise ValueError(f"malformed JSON, or a document over {self.max_chars / (1 << 20):g} MB")
        data = self.text.read(max(self.block, len(self.buf) - self.pos))
        if not data:
            self.eof = True
            return False
        cut = self.pos if self.anchor is None else self.anchor
        self.buf = self.buf[cut:] + data
        self.pos -= cut
        if self.anchor is not None:
            self.anchor = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the stream)."""
        while True:
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self.more():
                return ""

    def expect(self, chars: str, where: str) -> str:
        c = self.peek()
        if c == "" or c not in chars:
            found = "the end of the file" if c == "" else repr(c)
            raise ValueError(f"malformed JSON: expected {' or '.join(map(repr, chars))} {where}, found {found}")
        self.pos += 1
        return c

    def value(self) -> str:
        """The text of the next JSON value, checked to be well-formed."""
        self.peek()
        while True:
            try:
                _, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if len(self.buf) - self.pos > self.max_chars:
                    raise ValueError(f"malformed JSON, or an entry over {self.max_chars / (1 << 20):g} MB") from None
                if not self.more():
                    raise ValueError(f"malformed JSON: {e.msg}") from None
                continue
            if end == len(self.buf) and self.more():  # a number cut by the block boundary: read on
                continue
            text = self.buf[self.pos : end]
            self.pos = end
            return text


def iter_elements(text: io.TextIOBase, block: int = BLOCK_CHARS, max_chars: int = MAX_ELEMENT_CHARS) -> Iterator[str]:
    """The text of each element of the top-level array, or of the array under the top-level
    "entries" key (Alexandria's layout). A top-level object without "entries" is one structure:
    it is yielded whole, once, as a `WholeDocument`.

    Raises ValueError, after yielding every element before the fault, when the file is malformed or
    an element (or the whole document) holds more than `max_chars`.
    """
    cursor = _Cursor(text, block, max_chars)
    first = cursor.peek()
    if first == "[":
        cursor.pos += 1
        yield from _array(cursor)
        return
    if first != "{":
        raise ValueError("malformed JSON: not an array or object" if first else "empty file")
    cursor.anchor = cursor.pos
    cursor.pos += 1
    if cursor.peek() != "}":
        while True:
            key = json.loads(cursor.value())
            cursor.expect(":", "after a key")
            if key == "entries" and cursor.peek() == "[":
                cursor.anchor = None
                cursor.pos += 1
                yield from _array(cursor)
                return
            cursor.value()
            if cursor.expect(",}", "after a value") == "}":
                break
    else:
        cursor.pos += 1
    yield WholeDocument(cursor.buf[cursor.anchor : cursor.pos])


def _array(cursor: _Cursor) -> Iterator[str]:
    if cursor.peek() == "]":
        cursor.pos += 1
        return
    while True:
        yield cursor.value()
        if cursor.expect(",]", "after an array element") == "]":
            return
