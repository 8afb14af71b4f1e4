"""Starting Ray: a local in-process cluster on loopback, or an existing cluster by address."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from vbon.config import ResourcesConfig


def _quiet_ray(log_dir: Path | None) -> None:
    """Ray's own driver-side logging into LOG_DIR/ray.log (or nowhere), not the console."""
    logger = logging.getLogger("ray")
    logger.handlers.clear()
    logger.propagate = False
    if log_dir is None:
        logger.addHandler(logging.NullHandler())
        return
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(log_dir) / "ray.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)


@contextmanager
def ray_session(
    resources: ResourcesConfig, verbose: bool = True, log_dir: Path | None = None
) -> Iterator[None]:
    """Use the Ray already initialised by the caller, or start one and shut it down on exit.

    With no `ray_address`, the cluster in RAY_ADDRESS (as inside a submitted job), else a new
    local one (never one that a stale address file points to), listening on 127.0.0.1 only.
    Unless `verbose`, the actors' and workers' output stays in Ray's session logs and the
    driver's Ray logging goes to LOG_DIR/ray.log: the console shows vbon's own progress only.
    """
    if ray.is_initialized():
        yield
        return
    if resources.ray_address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # reports return sooner
    if not verbose:
        _quiet_ray(log_dir)
    ray.init(
        address=resources.ray_address or os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        log_to_driver=verbose,
    )
    try:
        yield
    finally:
        ray.shutdown()


def vbon_cause(exc: BaseException):
    """The vbon error (a user mistake, already one line) that a Ray task, actor or Train worker
    raised, found through Ray's wrappers; None if there is none."""
    from ray.exceptions import RayError

    from vbon.errors import VbonError

    seen: list[BaseException] = [exc]
    while seen:
        err = seen.pop()
        if isinstance(err, VbonError) and not isinstance(err, RayError):  # Ray's dual classes
            return err
        seen += [c for c in (getattr(err, "cause", None), err.__cause__) if c is not None]
        seen += list(getattr(err, "worker_failures", {}).values())
    return None


def error_line(exc: BaseException) -> str:
    """One line for an error raised through Ray: its vbon cause, else Ray's last line."""
    cause = vbon_cause(exc)
    if cause is not None:
        return str(cause)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
