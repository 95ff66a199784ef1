"""One server, one FIFO queue, simulated: how latency grows with offered load, and where it bends (the knee).

Lindley's recursion gives each request's wait from the one before it: W[n+1] = max(0, W[n] + S[n] - A[n+1]),
with S[n] the service times and A[n+1] the gap to the next arrival. With Poisson arrivals and exponential
service times (M/M/1) the mean time in the system is S / (1 - rho), where rho is the offered load as a
fraction of capacity; with a constant service time (M/D/1) the mean wait is half of M/M/1's
(Pollaczek-Khinchine). A notebook uses it to draw the curve that a few seconds of real load cannot: near
rho = 1 a queue takes far longer than that to reach its steady state.
"""

from __future__ import annotations

import itertools
from typing import Literal, get_args

import numpy as np

Service = Literal["exponential", "constant"]
SERVICES: tuple[str, ...] = get_args(Service)


def _check(load: float, service_s: float) -> None:
    if not 0 < load < 1:
        raise ValueError(f"load must be a fraction of capacity in (0, 1): at 1 or more no queue settles; got {load!r}")
    if not service_s > 0:
        raise ValueError(f"service_s must be a positive time in seconds, got {service_s!r}")


def mm1_mean_latency(load: float, service_s: float) -> float:
    """Mean time in the system (wait + service) of an M/M/1 queue: service_s / (1 - load)."""
    _check(load, service_s)
    return service_s / (1 - load)


def simulate_fifo(
    load: float,
    service_s: float,
    *,
    requests: int = 20_000,
    service: Service = "exponential",
    seed: int = 0,
) -> np.ndarray:
    """Time in the system of each of `requests` Poisson arrivals at `load` x capacity, served one at a time.

    `service_s` is the mean service time (capacity = 1 / service_s); `service` draws each one from an
    exponential distribution (M/M/1) or keeps it constant (M/D/1). Seeded: the same arguments give the
    same array.
    """
    _check(load, service_s)
    if service not in SERVICES:
        raise ValueError(f"service must be one of {SERVICES}, got {service!r}")
    if not isinstance(requests, int) or requests < 2:
        raise ValueError(f"requests must be a whole number >= 2, got {requests!r}")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(service_s / load, requests)  # Poisson arrivals at load / service_s per second
    times = rng.exponential(service_s, requests) if service == "exponential" else np.full(requests, service_s)
    steps = times[:-1] - gaps[1:]
    waits = np.fromiter(
        itertools.accumulate(steps, lambda wait, step: max(0.0, wait + step), initial=0.0), float, requests
    )
    return waits + times
