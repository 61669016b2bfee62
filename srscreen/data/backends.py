"""Where featurize's workers run: local processes (joblib's loky) or a dask.distributed cluster.

Both are joblib backends behind one `parallel_config`, so the pipeline is the same code either way:
tasks go out, results stream back in input order to the one writer in this process.

Local workers never outlive the run: an error or a SIGTERM in the parent stops them (inside
`io.atomic_write.sigterm_unwinds`, SIGTERM raises `SystemExit(143)`, so the run unwinds like on any error), and each
worker ends itself within a second of its parent's death, however the parent died (SIGKILL, a crash).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Generator, Iterator

from joblib import cpu_count, parallel_config

from srscreen.errors import OptionError

BACKENDS: tuple[str, ...] = ("local", "dask")


def check_backend(backend: str, scheduler: str | None) -> None:
    """Refuse an unknown backend, a missing scheduler address, or dask when it is not installed."""
    if backend not in BACKENDS:
        raise OptionError(f"`backend` must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "local":
        if scheduler is not None:
            raise OptionError("`scheduler` is for `backend='dask'`")
        return
    if not scheduler:
        raise OptionError("`backend='dask'` needs `scheduler` (the dask scheduler's address, e.g. tcp://host:8786)")
    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        raise OptionError("`backend='dask'` needs dask.distributed: pip install 'srscreen[dask]'") from None


@contextmanager
def compute_backend(backend: str = "local", *, jobs: int = -1, scheduler: str | None = None,
                    connect_timeout: float = 30.0) -> Iterator[None]:
    """Run the joblib `Parallel` calls inside on `backend`.

    `local`: `jobs` worker processes on this machine (-1: one per core; see `local_workers`).
    `dask`: the workers of the dask.distributed scheduler at `scheduler` (``tcp://host:8786``);
    `jobs` caps the tasks in flight (-1: one per worker thread). The workers must be able to
    import srscreen and to read the input paths (a shared file system), archives and dump chunks
    excepted, which travel with the tasks.
    """
    check_backend(backend, scheduler)
    if backend == "local":
        with parallel_config(backend="loky", n_jobs=jobs, initializer=_exit_with_parent, initargs=(os.getpid(),)):
            yield
        return
    from dask.distributed import Client

    try:
        client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise OptionError(f"cannot reach the dask scheduler at {scheduler}: {e}") from None
    try:
        with parallel_config(backend="dask", n_jobs=jobs, client=client):
            yield
    finally:
        client.close()


def local_workers(jobs: int) -> int:
    """The worker processes `jobs` asks for on this machine, capped at its cores (those this process may
    use): featurize is CPU-bound, so more processes would only add memory. -1 is one per core, -2 all
    but one, and so on, as in joblib."""
    cores = cpu_count()
    wanted = cores + 1 + jobs if jobs < 0 else jobs
    return max(1, min(wanted, cores))


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker once `parent` is gone (the worker is then re-parented), so a
    killed or crashed run leaves no process behind. A daemon thread looks once a second."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="srscreen-exit-with-parent", daemon=True).start()


def stop_workers(results: Generator) -> None:
    """Close joblib's generator of results: unfinished (an error stopped the run), that kills the workers
    now. Quietly: joblib's "tasks were cancelled" warning, and the traceback loky's manager thread can
    print while its workers are killed (KeyError in add_call_item_to_queue), would bury the error line."""
    hook = threading.excepthook

    def ignore_loky_manager(args: threading.ExceptHookArgs) -> None:
        if args.thread is None or args.thread.name != "ExecutorManagerThread":
            hook(args)

    threading.excepthook = ignore_loky_manager
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.close()
    finally:
        threading.excepthook = hook
