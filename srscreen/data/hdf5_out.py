"""HDF5 files written whole or not at all, and whose failed writes never reach the HDF5 library.

When a write fails (a full disk), HDF5 is left with a file it cannot flush: h5py then raises from
object destructors ("Exception ignored ... Can't decrement id ref count") and segfaulted closing the
file. So HDF5 writes here through a Python file object (h5py's "fileobj" driver) that never reports a
failure to it: the first failed write is recorded, that write and every later one are held in memory
(reads see them), and HDF5 goes on, closes the file cleanly, and only then is the error raised, the
temporary file removed by `replace_when_done` (which names the file in a `DiskFullError`).

What is held after a failure is bounded by what the writer does before it next calls `check()`:
one shard's worth for the shard writer.

A signal must not reach HDF5 either: a Ctrl-C whose KeyboardInterrupt rose inside one of these
callbacks (H5FD_fileobj_get_eof calling `seek`) came out of h5py as "SystemError: ... returned a
result with an exception set", a traceback and exit 1 instead of 130. So SIGINT and SIGTERM are held
while a file is written, and their own handlers run at `check()` and when the file is done.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from srscreen.io.atomic_write import replace_when_done


class _HeldAfterFailure:
    """The file-object interface h5py's fileobj driver uses (seek, tell, read, write, truncate, flush)
    over an unbuffered file, so each write fails where it happens. After the first failure, writes go
    to memory instead, and `error` holds the failure."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "r+b", buffering=0)
        self._pos = 0
        self._end = 0  # the file's logical size
        self._held: list[tuple[int, bytes]] = []  # (offset, data) written after the failure, in order
        self.error: BaseException | None = None

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = offset if whence == os.SEEK_SET else self._pos + offset if whence == os.SEEK_CUR else self._end + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        try:
            return self._read(size)
        except BaseException as e:  # noqa: BLE001 - a signal's exception: kept for `check`, the read done again
            self.error = self.error or e
            return self._read(size)

    def _read(self, size: int) -> bytes:
        size = max(0, self._end - self._pos) if size < 0 else size
        self._file.seek(self._pos)
        data = bytearray(self._file.read(size) or b"")
        data.extend(bytes(size - len(data)))  # past what reached the disk: zeros, as sec2 gives
        for offset, held in self._held:  # later writes over earlier ones
            lo, hi = max(offset, self._pos), min(offset + len(held), self._pos + size)
            if lo < hi:
                data[lo - self._pos : hi - self._pos] = held[lo - offset : hi - offset]
        self._pos += size
        return bytes(data)

    def write(self, data: bytes | bytearray) -> int:
        if self.error is None:
            try:
                self._file.seek(self._pos)
                view = memoryview(data)
                while view:
                    view = view[self._file.write(view) :]
            except BaseException as e:  # noqa: BLE001 - a signal's exception too: HDF5 must never see one
                self.error = e
        if self.error is not None:
            self._held.append((self._pos, bytes(data)))
        self._pos += len(data)
        self._end = max(self._end, self._pos)
        return len(data)

    def truncate(self, size: int) -> int:
        if self.error is None:
            try:
                self._file.truncate(size)
            except BaseException as e:  # noqa: BLE001
                self.error = e
        self._end = size
        return size

    def flush(self) -> None:
        pass  # unbuffered: every write has reached the system already

    def close(self) -> None:
        self._file.close()


@contextmanager
def _signals_held() -> Iterator[Callable[[], None]]:
    """(deliver): SIGINT and SIGTERM recorded instead of handled while the block runs (in the main thread,
    where Python runs handlers; an ignored signal stays ignored); `deliver()` runs the first recorded one's
    own handler (its KeyboardInterrupt or SystemExit rises there, outside HDF5), as does leaving the block."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    held = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) not in (signal.SIG_IGN, None)}
    pending: list[int] = []

    def deliver() -> None:
        if not pending:
            return
        signum = pending[0]
        pending.clear()
        handler = held[signum]
        if callable(handler):
            handler(signum, None)
        else:  # SIG_DFL: the signal again, now that it does what it would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in held:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield deliver
    finally:
        for s, h in held.items():
            signal.signal(s, h)
        deliver()


@contextmanager
def new_hdf5(path: Path) -> Iterator[tuple[h5py.File, Callable[[], None]]]:
    """(the new HDF5 file, check): write the file; `check()` runs a SIGINT or SIGTERM held since (see the
    module docstring) and raises the first write error so far (call it between large steps to stop
    early). `path` is replaced only when the block and every write succeed."""
    with replace_when_done(path) as tmp, _signals_held() as deliver:
        target = _HeldAfterFailure(tmp)
        try:
            f = h5py.File(target, "w")

            def check() -> None:
                deliver()
                if target.error is not None:
                    raise target.error

            try:
                yield f, check
            finally:
                f.close()
            check()
        finally:
            target.close()
