"""The same FastAPI app under Ray Serve: each replica builds `create_app(config)` (model, batcher, metrics) in its
own process, and Ray's proxy spreads requests over replicas on every node of the cluster."""

from __future__ import annotations

import signal
import threading
from typing import Any

from ray import serve

from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig


@serve.ingress()
class CrossrankReplica:
    """One replica: the full app, so micro-batching happens per replica on the requests it receives."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.config)


def build_application(config: ServerConfig, *, replicas: int = 1, autoscaling: dict[str, Any] | None = None,
                      num_cpus: float = 1.0, max_ongoing_requests: int = 256) -> serve.Application:
    """A Serve application; `autoscaling` (min_replicas, max_replicas, target_ongoing_requests, ...) replaces the
    fixed replica count. `max_ongoing_requests` must stay high, or Serve's default of 5 would starve batching."""
    options: dict[str, Any] = {"name": "crossrank", "ray_actor_options": {"num_cpus": num_cpus},
                               "max_ongoing_requests": max_ongoing_requests}
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas
    return serve.deployment(CrossrankReplica, **options).bind(config)


def run_serve(config: ServerConfig, *, host: str, port: int, address: str | None, **deployment: Any) -> None:
    """Start (or join, with `address`) a Ray cluster, deploy, and block until SIGINT/SIGTERM."""
    import ray

    ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(config, **deployment), name="crossrank", route_prefix="/")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
