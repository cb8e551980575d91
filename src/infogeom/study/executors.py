"""Executors: ``submit(job) -> concurrent.futures.Future`` over independent cells, the cache the only shared state.

A job is a small JSON-able dict (output folder, cell spec, key, seed, the keys of the cells it needs);
:func:`run_cell` runs it in the cell's folder under the cell's lock with one torch thread and writes its result.

- ``local``: a pool of ``--jobs`` spawned worker processes (one torch thread each); a worker that dies
  (``kill -9``, out of memory) is replaced and its cell retried from its folder up to ``retries`` times.
- ``ray``: Ray tasks on a local Ray instance or an existing cluster (``--ray-address``), with each cell's
  ``num_cpus``/``num_gpus`` as resources and Ray's ``max_retries`` for dead workers; the cluster must see the output
  folder (shared filesystem) and have infogeom installed.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import socket
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

from .. import __version__
from ..errors import InfogeomError
from .cache import CellStore

EXECUTORS = ("local", "ray")


class CellFailed(RuntimeError):
    """The cell's run function raised; its traceback is in the cell's ``error.txt``."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve(fn: str):
    """``"package.module:function"`` -> the function."""
    mod, sep, name = fn.partition(":")
    if not sep:
        raise InfogeomError(f"cell function {fn!r} is not of the form module:function")
    return getattr(importlib.import_module(mod), name)


def run_cell(job: dict) -> dict:
    """Run one cell (in whatever process the executor chose) and record it in its folder.

    Holds the cell's lock for the whole run, so a second worker given the same cell waits and then finds it done.
    Returns ``{"cached": bool, "wall_s", "cpu_s"}``; a raising run function leaves ``error.txt`` and raises
    :class:`CellFailed`.
    """
    import torch

    torch.set_num_threads(1)
    store, key, spec = CellStore(Path(job["out"])), job["key"], job["cell"]
    with store.claim(key) as workdir:
        if store.done(key):
            return {"cached": True, "wall_s": 0.0, "cpu_s": 0.0}
        started, t0, c0 = _now(), time.perf_counter(), time.process_time()
        try:
            inputs = {name: {"result": store.result(k, name), "dir": store.dir(k)} for name, k in job["inputs"].items()}
            result = resolve(spec["fn"])(dict(spec["params"]), int(job["seed"]), workdir, inputs)
            if not isinstance(result, dict):
                raise TypeError(f"run function returned {type(result).__name__}, not a dict")
            json.dumps(result)  # fail here, with the cell named, if it is not JSON-serializable
        except Exception as exc:
            store.fail(key, traceback.format_exc())
            line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise CellFailed(f"{type(exc).__name__}: {line}") from None
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        info = {"cell": spec, "hash": key, "seed": job["seed"], "version": __version__, "started": started,
                "finished": _now(), "wall_s": wall, "cpu_s": cpu, "host": platform.node(), "pid": os.getpid()}
        store.finish(key, info, result)
    return {"cached": False, "wall_s": wall, "cpu_s": cpu}


def _watch_parent(parent: int) -> None:
    """Exit this worker as soon as the study process that started it is gone (e.g. ``kill -9``)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(parent: int) -> None:
    import torch

    torch.set_num_threads(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class LocalExecutor:
    """``jobs`` spawned worker processes on this machine."""

    name = "local"

    def __init__(self, jobs: int, retries: int = 2):
        self.jobs, self.retries = jobs, retries
        self.pool = self._pool()

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(os.getpid(),))

    def submit(self, job: dict, attempt: int = 0) -> Future:
        """Run ``job`` in a worker; a future whose worker died resubmits the job (``retries`` times)."""
        out: Future = Future()

        def done(f: Future) -> None:
            exc = f.exception()
            if isinstance(exc, BrokenProcessPool) and attempt < self.retries:
                try:
                    nxt = self.submit(job, attempt + 1)
                except RuntimeError as e:  # shut down meanwhile
                    out.set_exception(e)
                    return
                nxt.add_done_callback(lambda g: _copy(g, out))
            else:
                _copy(f, out)

        try:
            inner = self.pool.submit(run_cell, job)
        except BrokenProcessPool:  # a worker died: replace the whole pool
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._pool()
            inner = self.pool.submit(run_cell, job)
        inner.add_done_callback(done)
        return out

    def close(self, cancel: bool = False) -> None:
        if cancel:  # stop running cells now: their folders keep whatever checkpoints they wrote
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.terminate()
        self.pool.shutdown(wait=not cancel, cancel_futures=True)


def _copy(src: Future, dst: Future) -> None:
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


def _check_address(address: str) -> None:
    """One-line error if a ``host:port`` Ray address does not accept connections within 5 s."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InfogeomError(f"--ray-address {address!r} is not of the form host:port (or ray://host:port, auto)")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise InfogeomError(f"Ray address {address} does not answer ({exc.strerror or exc})") from None


class RayExecutor:
    """Ray tasks on a local instance (``address=None``, ``jobs`` CPUs) or the cluster at ``address``."""

    name = "ray"

    def __init__(self, jobs: int, address: str | None = None, retries: int = 2):
        try:
            import ray
        except ImportError:
            raise InfogeomError("the ray executor needs Ray: pip install 'infogeom[ray]'") from None
        if address:
            _check_address(address)
        env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        import logging

        try:
            ray.init(address=address, num_cpus=None if address else jobs, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, ignore_reinit_error=True,
                     runtime_env={"env_vars": env} if env else None)
        except Exception as exc:  # ConnectionError, RuntimeError, ...: all mean "no cluster there"
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InfogeomError(f"cannot connect to Ray{f' at {address}' if address else ''}: {line}") from None
        self.ray, self.retries = ray, retries
        self.task = ray.remote(run_cell)

    def submit(self, job: dict) -> Future:
        spec = job["cell"]
        ref = self.task.options(num_cpus=spec["num_cpus"], num_gpus=spec["num_gpus"], max_retries=self.retries,
                                name=f"{spec['experiment']}/{spec['name']}").remote(job)
        return ref.future()

    def close(self, cancel: bool = False) -> None:
        self.ray.shutdown()


def make_executor(name: str, jobs: int, address: str | None = None, retries: int = 2):
    """The executor called ``name`` (see :data:`EXECUTORS`)."""
    if name == "local":
        if address:
            raise InfogeomError("--ray-address needs --executor ray")
        return LocalExecutor(jobs, retries)
    if name == "ray":
        return RayExecutor(jobs, address, retries)
    raise InfogeomError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")

