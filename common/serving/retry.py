"""How long a client waits before retrying a refused request: exponential backoff, with jitter.

A server that refuses work (429, 503) refuses many clients at the same moment. If each waits the same
`base * 2**attempt`, they all come back at the same moment too, and the retries arrive as one spike that
is refused again. Jitter spreads each wait at random so the retries arrive spread out. The four rules are
those of Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015,
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/); "full" is the one it
recommends, and what tenacity's `wait_random_exponential` computes. A `Retry-After` from the server is a
floor: a client should never come back sooner than it was told.
"""

from __future__ import annotations

import random
from typing import Literal, get_args

Jitter = Literal["none", "full", "equal", "decorrelated"]
JITTERS: tuple[str, ...] = get_args(Jitter)


def backoff_delays(
    attempts: int,
    base_s: float,
    cap_s: float,
    jitter: Jitter = "full",
    rng: random.Random | None = None,
    retry_after_s: float = 0.0,
) -> list[float]:
    """The waits before each of `attempts` retries, in seconds, each at least `retry_after_s`.

    none: min(cap, base * 2**n); full: uniform(0, that); equal: half of it plus uniform(0, half);
    decorrelated: min(cap, uniform(base, 3 * previous wait)), starting from base.
    """
    if not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"attempts must be a whole number >= 0, got {attempts!r}")
    if not 0 < base_s <= cap_s:
        raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s!r}, cap_s={cap_s!r}")
    if jitter not in JITTERS:
        raise ValueError(f"jitter must be one of {JITTERS}, got {jitter!r}")
    if retry_after_s < 0:
        raise ValueError(f"retry_after_s must be >= 0 seconds, got {retry_after_s!r}")
    rng = rng or random.Random()
    delays, previous = [], base_s
    for n in range(attempts):
        ceiling = min(cap_s, base_s * 2**n)
        if jitter == "none":
            delay = ceiling
        elif jitter == "full":
            delay = rng.uniform(0, ceiling)
        elif jitter == "equal":
            delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
        else:  # decorrelated: grows from the previous wait, not from the attempt number
            delay = previous = min(cap_s, rng.uniform(base_s, 3 * previous))
        delays.append(max(delay, retry_after_s))
    return delays
