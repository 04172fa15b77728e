"""Run one function over many work items, in local processes or on a Ray cluster.

The data pipeline is written against one small interface, :class:`Executor`: ``map(fn, items)``
calls ``fn(item)`` for every item and returns the results in item order (with a progress bar
named ``description`` on a terminal). ``fn`` must be a module-level
function and items and results picklable, because they cross process (or machine) boundaries.
``items`` may be a lazy iterable: each item is submitted as soon as it is produced, so a reader can
keep cutting input into work units while earlier units are already being processed.

- :class:`LocalExecutor` runs ``workers`` processes (``spawn`` start method, so no state leaks from the
  parent and it behaves the same on every OS); ``workers == 1`` runs everything in this process, which is
  what tests and debuggers want. The pool lives until ``close()`` (or the ``with`` block ends), so
  successive ``map`` calls do not pay the start-up again.
- :class:`RayExecutor` runs each item as a Ray task. Ray is an optional extra (``pip install
  lmforge[dist]``) imported only here. With no address it starts a local Ray instance with
  ``num_cpus`` CPUs; with an address it joins that cluster, whose workers must be able to import
  lmforge and see the same file system paths (a shared disk) as the driver.

A failing item raises its exception from ``map`` (the other pending items are cancelled).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar

from lmforge.errors import ConfigError
from lmforge.log import progress

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "available_cpus", "make_executor"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class Executor(Protocol):
    """Runs ``fn`` over ``items``; results come back in item order."""

    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, description: str = "") -> list[R]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _Closing:
    def __enter__(self: Any) -> Any:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


class LocalExecutor(_Closing):
    """Run work items in up to ``workers`` local processes (``spawn``), or in-process when ``workers == 1``.

    Args:
        workers: number of processes; 0 means one per available CPU.
    """

    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers or available_cpus()
        self._pool: Any = None

    def _get_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, description: str = "") -> list[R]:
        """``[fn(item) for item in items]``, computed in parallel; at most 2 × workers items in flight."""
        if self.workers == 1:
            return [fn(item) for item in progress(items, description=description)]
        pool = self._get_pool()
        futures: list[Any] = []
        pending: deque[Any] = deque()
        try:
            for item in items:
                while len(pending) >= 2 * self.workers:
                    pending.popleft().result()  # back-pressure, and fail early
                future = pool.submit(fn, item)
                futures.append(future)
                pending.append(future)
            return [f.result() for f in progress(futures, total=len(futures), description=description)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(_Closing):
    """Run work items as Ray tasks (one CPU each).

    Args:
        address: a running cluster to join (``ray://host:10001`` or ``auto``); "" starts a local Ray.
        num_cpus: CPUs of the local Ray instance (0: all available); ignored when joining a cluster.
    """

    def __init__(self, address: str = "", num_cpus: int = 0) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                "executor", "ray is not installed; install the extra with `pip install lmforge[dist]`"
            ) from exc
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus or available_cpus()
            ray.init(**kwargs)
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        log.info("ray: %d CPUs (%s)", self.workers, address or "local instance")

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, description: str = "") -> list[R]:
        """``[fn(item) for item in items]`` as Ray tasks; at most 2 × cluster CPUs tasks in flight."""
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        refs: list[Any] = []
        pending: list[Any] = []
        try:
            for item in items:
                while len(pending) >= 2 * self.workers:
                    done, pending = ray.wait(pending, num_returns=1)
                    ray.get(done)  # fail early
                ref = remote.remote(item)
                refs.append(ref)
                pending.append(ref)
            return [ray.get(ref) for ref in progress(refs, total=len(refs), description=description)]
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        """Shut down the local Ray instance if this executor started it."""
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str, workers: int = 0, address: str = "") -> LocalExecutor | RayExecutor:
    """The executor named by a config: ``local`` (``workers`` processes) or ``ray``.

    Raises:
        ConfigError: an unknown kind, or ray requested but not installed.
    """
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    raise ConfigError("executor", f"must be one of local, ray, got {kind!r}")
