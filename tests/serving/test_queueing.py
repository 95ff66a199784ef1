"""The FIFO simulation agrees with queueing theory: M/M/1's mean, M/D/1's half wait, the knee."""

from __future__ import annotations

import numpy as np
import pytest

from common.serving.queueing import mm1_mean_latency, simulate_fifo

SERVICE_S = 0.010


@pytest.mark.parametrize("load", [0.3, 0.5, 0.7, 0.8])
def test_mm1_simulation_matches_the_formula(load):
    simulated = simulate_fifo(load, SERVICE_S, requests=200_000, seed=1).mean()
    assert simulated == pytest.approx(mm1_mean_latency(load, SERVICE_S), rel=0.08)


@pytest.mark.parametrize("load", [0.5, 0.8])
def test_constant_service_halves_the_wait(load):
    """Pollaczek-Khinchine: M/D/1's mean wait is half of M/M/1's at the same load."""
    md1_wait = simulate_fifo(load, SERVICE_S, requests=200_000, service="constant", seed=2).mean() - SERVICE_S
    mm1_wait = mm1_mean_latency(load, SERVICE_S) - SERVICE_S
    assert md1_wait == pytest.approx(mm1_wait / 2, rel=0.1)


def test_latency_bends_near_capacity():
    means = [simulate_fifo(load, SERVICE_S, seed=3).mean() for load in (0.1, 0.5, 0.9)]
    assert means[1] < 2.5 * means[0]  # flat at low load: 1.11 -> 2 service times
    assert means[2] > 4 * means[1]  # steep near capacity: 2 -> 10 service times


def test_every_request_is_served_and_the_run_is_seeded():
    a = simulate_fifo(0.6, SERVICE_S, requests=1000, seed=4)
    assert a.shape == (1000,) and (a > 0).all()
    assert np.array_equal(a, simulate_fifo(0.6, SERVICE_S, requests=1000, seed=4))
    constant = simulate_fifo(0.6, SERVICE_S, requests=1000, service="constant")
    assert constant.min() == pytest.approx(SERVICE_S)  # no request is served faster than the service time


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load": 1.0}, "load"),
        ({"load": 0.0}, "load"),
        ({"service_s": 0.0}, "service_s"),
        ({"service": "uniform"}, "service"),
        ({"requests": 1}, "requests"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    args = {"load": 0.5, "service_s": SERVICE_S, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate_fifo(**args)
