"""Backoff delays follow the four rules of AWS's "Exponential Backoff And Jitter", and jitter spreads retries."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from common.serving.retry import JITTERS, Jitter, backoff_delays

BASE, CAP = 0.1, 1.0


def ceilings(attempts: int) -> list[float]:
    return [min(CAP, BASE * 2**n) for n in range(attempts)]


def test_without_jitter_the_wait_doubles_up_to_the_cap():
    assert backoff_delays(6, BASE, CAP, "none") == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@pytest.mark.parametrize("seed", range(5))
def test_full_and_equal_jitter_stay_within_their_ranges(seed):
    full = backoff_delays(8, BASE, CAP, "full", random.Random(seed))
    equal = backoff_delays(8, BASE, CAP, "equal", random.Random(seed))
    for wait, half_wait, ceiling in zip(full, equal, ceilings(8), strict=True):
        assert 0 <= wait <= ceiling
        assert ceiling / 2 <= half_wait <= ceiling


def test_full_jitter_draws_across_the_whole_range():
    rng = random.Random(0)
    first = [backoff_delays(1, BASE, CAP, "full", rng)[0] for _ in range(2000)]
    assert min(first) < 0.05 * BASE and max(first) > 0.95 * BASE  # the whole of [0, base]
    assert sum(first) / len(first) == pytest.approx(BASE / 2, rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_decorrelated_jitter_grows_from_the_previous_wait(seed):
    waits = backoff_delays(10, BASE, CAP, "decorrelated", random.Random(seed))
    assert all(BASE <= w <= CAP for w in waits)
    previous = BASE
    for w in waits:
        assert w <= 3 * previous + 1e-12
        previous = w


@pytest.mark.parametrize("jitter", JITTERS)
def test_retry_after_is_a_floor(jitter):
    waits = backoff_delays(5, BASE, CAP, jitter, random.Random(1), retry_after_s=0.5)
    assert all(w >= 0.5 for w in waits)
    assert len(waits) == 5


def test_jitter_spreads_clients_refused_together():
    """100 clients refused at once: without jitter they all retry in the same instant, with full jitter the
    busiest 10 ms holds a small share of them (uniform over 100 ms: about 10, allowing for chance)."""
    rng = random.Random(0)

    def busiest_10ms(jitter: Jitter) -> int:
        retries = Counter(int(backoff_delays(1, BASE, CAP, jitter, rng)[0] // 0.010) for _ in range(100))
        return max(retries.values())

    assert busiest_10ms("none") == 100
    assert busiest_10ms("full") <= 25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": -1}, "attempts"),
        ({"attempts": 2.5}, "attempts"),
        ({"base_s": 0.0}, "base_s"),
        ({"base_s": 2.0, "cap_s": 1.0}, "base_s"),
        ({"jitter": "random"}, "jitter"),
        ({"retry_after_s": -1.0}, "retry_after_s"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    args = {"attempts": 3, "base_s": BASE, "cap_s": CAP, "jitter": "full", **kwargs}
    with pytest.raises(ValueError, match=message):
        backoff_delays(**args)
