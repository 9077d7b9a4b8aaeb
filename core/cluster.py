"""Joining a Ray cluster for the batch jobs that can use one (`marketsearch embed --ray`, `index --ray`)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

INSTALL_HINT = "--ray needs Ray: `pip install 'marketsearch[scale]'` (or `uv pip install 'ray[data]'`)"


def connect_ray(address: str | None = "auto") -> None:
    """Join the Ray cluster at ``address`` unless this process already has; "auto" joins the cluster this
    machine runs, else starts a local one; ``ray://HOST:10001`` joins a remote head through Ray Client."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        ray.init(include_dashboard=False, log_to_driver=False)
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError:
        if address != "auto":
            raise
        logger.info("no running Ray cluster found: starting a local one")
        ray.init(include_dashboard=False, log_to_driver=False)


def ray_cpus() -> int:
    """CPUs of the connected Ray cluster (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
