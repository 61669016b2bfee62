"""Where featurize's workers run: local processes (joblib's loky) or a dask.distributed cluster.

Both are joblib backends behind one `parallel_config`, so the pipeline is the same code either way:
tasks go out, results stream back in input order to the one writer in this process.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from joblib import parallel_config

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

    `local`: `jobs` worker processes on this machine (-1: one per core).
    `dask`: the workers of the dask.distributed scheduler at `scheduler` (``tcp://host:8786``);
    `jobs` caps the tasks in flight (-1: one per worker thread). The workers must be able to
    import srscreen and to read the input paths (a shared file system), archives and dump chunks
    excepted, which travel with the tasks.
    """
    check_backend(backend, scheduler)
    if backend == "local":
        with parallel_config(n_jobs=jobs):
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
