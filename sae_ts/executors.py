"""Where measurement jobs run: in this process, or on a Ray cluster.

An :class:`Executor` maps a function over jobs and yields ``(job index, result)`` as results come
back, so the caller (the driver) can save each one at once. Every job runs against a *context*
(an :class:`~sae_ts.effects.EffectEstimator`, a comparison's models and judges...):

* :class:`LocalExecutor` runs the jobs one after the other here, against the driver's own context;
* :class:`RayExecutor` starts ``workers`` Ray actors; each calls ``load()`` once (the same model
  and SAE as the driver, e.g. ``functools.partial(sae_ts.load_default, device="cuda")``) and
  builds its context from that with the ``remote`` builder it is given. A worker that dies (killed,
  out of memory, node lost) is replaced and its job re-queued.

Jobs must not depend on which worker runs them: sae-ts seeds every random stream from the job's
own ids. Ray is optional (``pip install 'sae-ts[ray]'``); it is imported only by
:class:`RayExecutor`.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import torch

from .errors import ConfigError, MissingExtraError, WorkerError
from .loading import Loaded

__all__ = ["Executor", "LocalExecutor", "RayExecutor"]

C = TypeVar("C")
J = TypeVar("J")
R = TypeVar("R")

RAY_HINT = "Ray is not installed; install the extra with: pip install 'sae-ts[ray]'"


class Executor(Protocol):
    """Runs ``fn(context, job)`` for every job; yields ``(index, result)`` in completion order."""

    in_process: bool  # True when jobs run in this process (progress bars may be shown)

    def imap(
        self,
        fn: Callable[[C, J], R],
        jobs: Iterable[J],
        *,
        local: C,
        remote: Callable[[Loaded], C],
    ) -> Iterator[tuple[int, R]]:
        """``local``: the driver's context; ``remote``: builds a worker's from its own model."""
        ...


class LocalExecutor:
    """Runs every job here, in order, against the driver's context (today's single process)."""

    in_process = True

    def imap(
        self,
        fn: Callable[[C, J], R],
        jobs: Iterable[J],
        *,
        local: C,
        remote: Callable[[Loaded], C] | None = None,
    ) -> Iterator[tuple[int, R]]:
        for i, job in enumerate(jobs):
            yield i, fn(local, job)


class _Worker:
    """The body of a Ray actor: loads the model and SAE once, then runs jobs."""

    def __init__(self, load: Callable[[], Loaded], threads: int) -> None:
        torch.set_num_threads(threads)  # CPU rounding depends on the thread count: fix it
        self.loaded = load()
        self._key: str | None = None
        self._context: Any = None

    def run(
        self, key: str, remote: Callable[[Loaded], Any], fn: Callable[..., Any], job: Any
    ) -> Any:
        if key != self._key:  # a new imap call: build its context once
            self._context, self._key = remote(self.loaded), key
        return fn(self._context, job)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise MissingExtraError(RAY_HINT) from e
    return ray


class RayExecutor:
    """Jobs on ``workers`` Ray actors, each holding its own model and SAE.

    Args:
        load: called once in each worker; returns the model and SAE (picklable: a module-level
            function or a ``functools.partial`` of one, e.g. of :func:`sae_ts.load`).
        workers: number of actors.
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); ``None``
            connects as ``ray.init()`` does (``RAY_ADDRESS``, a cluster started on this machine,
            else a new local one). Ignored when Ray is already initialised.
        gpus_per_worker: GPUs reserved per actor (fractions share a GPU); Ray sets
            ``CUDA_VISIBLE_DEVICES``, so ``device="cuda"`` in ``load`` is the actor's own GPU.
        cpus_per_worker: CPUs reserved per actor, and its torch thread count. CPU results are
            bit-identical to a single process only at the same thread count.
        max_retries: times one job may lose its worker before :class:`WorkerError`.

    All workers must fit in the cluster's free resources when the first job is sent
    (:class:`~sae_ts.errors.ConfigError` otherwise).
    """

    in_process = False

    def __init__(
        self,
        load: Callable[[], Loaded],
        workers: int = 1,
        *,
        address: str | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: int = 1,
        max_retries: int = 3,
    ) -> None:
        if workers < 1 or cpus_per_worker < 1 or gpus_per_worker < 0 or max_retries < 0:
            raise ConfigError(
                "need workers >= 1, cpus_per_worker >= 1, gpus_per_worker >= 0, max_retries >= 0"
            )
        self._ray = _import_ray()
        self.load = load
        self.workers = workers
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.max_retries = max_retries
        self.actors: list[Any] = []
        self._started_ray = False

    def _new_actor(self) -> Any:
        cls = self._ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)
        return cls(_Worker).remote(self.load, self.cpus_per_worker)

    def start(self) -> None:
        """Connect to Ray and start the actors (done by the first :meth:`imap` otherwise)."""
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False)
            self._started_ray = True
        if not self.actors:
            self._check_room(ray.available_resources())
        while len(self.actors) < self.workers:
            self.actors.append(self._new_actor())

    def _check_room(self, free: dict[str, float]) -> None:
        """Refuse more workers than the cluster can hold now (their jobs would wait forever)."""
        room = int(free.get("CPU", 0) // self.cpus_per_worker)
        if self.gpus_per_worker:
            room = min(room, int(free.get("GPU", 0) // self.gpus_per_worker))
        if room < self.workers:
            raise ConfigError(
                f"the Ray cluster has {free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs "
                f"free: room for {room} workers of {self.cpus_per_worker} CPUs and "
                f"{self.gpus_per_worker:g} GPUs, not {self.workers}"
            )

    def imap(
        self,
        fn: Callable[[C, J], R],
        jobs: Iterable[J],
        *,
        local: C | None = None,
        remote: Callable[[Loaded], C],
    ) -> Iterator[tuple[int, R]]:
        ray = self._ray
        self.start()
        key, remote_ref = uuid.uuid4().hex, ray.put(remote)
        source = enumerate(jobs)
        retry: deque[tuple[int, J]] = deque()
        failures: dict[int, int] = {}
        pending: dict[Any, tuple[int, int, J]] = {}  # ref -> (actor slot, job index, job)

        def submit(slot: int) -> None:
            item = retry.popleft() if retry else next(source, None)
            if item is not None:
                ref = self.actors[slot].run.remote(key, remote_ref, fn, item[1])
                pending[ref] = (slot, *item)

        try:
            for slot in range(len(self.actors)):
                submit(slot)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                slot, i, job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as e:  # the worker died: replace, re-queue
                    failures[i] = failures.get(i, 0) + 1
                    if failures[i] > self.max_retries:
                        raise WorkerError(
                            f"job {i} lost its worker {failures[i]} times; last: {e}"
                        ) from e
                    self._kill(self.actors[slot])
                    self.actors[slot] = self._new_actor()
                    retry.append((i, job))
                    submit(slot)
                    continue
                submit(slot)
                yield i, result
        finally:
            for ref in pending:  # the caller stopped early (error, interrupt): drop its jobs
                try:
                    ray.cancel(ref)
                except Exception:  # already finished or its worker gone: nothing to cancel
                    pass

    def close(self, release_timeout_s: float = 30.0) -> None:
        """Stop the actors (and Ray, if this executor started it).

        Ray frees a killed actor's CPUs and GPUs asynchronously; ``close`` waits (up to
        ``release_timeout_s``) until they are back, so an executor started right after this one
        sees them free.
        """
        actors, self.actors = self.actors, []
        if not actors:
            pass
        elif self._started_ray:  # the shutdown below frees everything
            for a in actors:
                self._kill(a)
        else:
            ray = self._ray
            want = min(
                ray.available_resources().get("CPU", 0) + self.cpus_per_worker * len(actors),
                ray.cluster_resources().get("CPU", 0),
            )
            for a in actors:
                self._kill(a)
            deadline = time.monotonic() + release_timeout_s
            while ray.available_resources().get("CPU", 0) < want and time.monotonic() < deadline:
                time.sleep(0.05)  # past the deadline, someone else took them: stop waiting
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            pass

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
