"""Run independent member trainings: in-process, a local process pool, or Ray core tasks.

``fn`` must be a module-level function (it is pickled) and every task a picklable argument.
Results come back in task order whatever order they finish in, so runs are deterministic.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm

from pcert.errors import ResourceError, UserError


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], *, kind: str = "local", workers: int | None = None,
              address: str | None = None, quiet: bool = True, desc: str = "members") -> list[Any]:
    """``[fn(t) for t in tasks]``, spread over ``workers`` local processes or a Ray cluster."""
    bar = tqdm(total=len(tasks), desc=desc, disable=quiet, leave=False)
    try:
        if kind == "ray":
            return _run_ray(fn, tasks, address, bar)
        if kind != "local":
            raise UserError(f"executor: unknown kind {kind!r} (expected 'local' or 'ray')")
        if workers is not None and workers < 1:
            raise UserError(f"executor: workers must be >= 1, got {workers}")
        if (workers or 1) == 1 or len(tasks) <= 1:
            out = []
            for t in tasks:
                out.append(fn(t))
                bar.update()
            return out
        results: list[Any] = [None] * len(tasks)
        # spawn: torch is not fork-safe once its thread pools exist
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
            for f in as_completed(futures):
                results[futures[f]] = f.result()
                bar.update()
        return results
    finally:
        bar.close()


def _run_ray(fn, tasks, address, bar) -> list[Any]:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is an optional extra
        raise ResourceError("executor ray: the 'ray' package is not installed (pip install pcert[ray])") from exc
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except Exception as exc:  # ray raises many types for an unreachable cluster
            raise ResourceError(f"executor ray: cannot connect to {address!r}: {exc}") from exc
    remote = ray.remote(fn)
    refs = [remote.remote(t) for t in tasks]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(tasks)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            results[index[ref]] = ray.get(ref)
            bar.update()
    return results
