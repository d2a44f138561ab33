"""When to try again, and when to stop trying.

Failed SMS sends and webhook deliveries are retried on fixed schedules
(a phone that is briefly offline, a customer endpoint that is down for a
deploy); supervised actors are restarted with capped exponential backoff,
and a supervisor gives up when restarts come too fast.  Every delay is
jittered so that many retries scheduled at once do not fire at once.
Randomness and time are passed in, which keeps these functions exact in
tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

__all__ = [
    "SMS_RETRY_SCHEDULE",
    "WEBHOOK_RETRY_SCHEDULE",
    "RestartWindow",
    "exponential_delay",
    "scheduled_delay",
]

# Seconds before the 1st, 2nd, ... retry of an SMS send.
SMS_RETRY_SCHEDULE = (30.0, 120.0, 480.0)

# Seconds before the 1st, 2nd, ... retry of a webhook delivery: 10 s up to
# 12 h, spread over about 20 h in total so a receiver that is down for
# hours still gets its events.
WEBHOOK_RETRY_SCHEDULE = (10.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0, 43200.0)

# 2.0 ** 1024 overflows a float; a larger exponent is capped anyway.
_MAX_EXPONENT = 1023


def scheduled_delay(
    schedule: Sequence[float],
    attempt: int,
    *,
    rand: Callable[[], float],
    jitter: float = 0.1,
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based), or None.

    Returns ``schedule[attempt - 1]`` scaled by a factor drawn uniformly
    from ``[1 - jitter, 1 + jitter)``; None once the schedule is exhausted,
    meaning give up.  ``rand`` is only called when a delay is returned.
    Raises ValueError for ``attempt < 1`` or a jitter outside [0, 1].
    """
    _check_attempt(attempt)
    _check_jitter(jitter)
    if attempt > len(schedule):
        return None
    return _jittered(schedule[attempt - 1], rand=rand, jitter=jitter)


def exponential_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rand: Callable[[], float],
    jitter: float = 0.1,
) -> float:
    """Seconds to wait before restart number ``attempt`` (1-based).

    ``base * 2 ** (attempt - 1)``, capped at ``cap``, then jittered like
    ``scheduled_delay``; the jitter applies after the cap, so a delay may
    exceed ``cap`` by up to ``jitter * cap``.  Raises ValueError for
    ``attempt < 1`` or a jitter outside [0, 1].
    """
    _check_attempt(attempt)
    _check_jitter(jitter)
    exponent = min(attempt - 1, _MAX_EXPONENT)
    return _jittered(min(cap, base * 2.0**exponent), rand=rand, jitter=jitter)


@attrs.define
class RestartWindow:
    """Restart intensity of a supervisor: at most N restarts per window.

    Like Erlang/OTP's intensity and period: restarting forever hides a
    crash loop, so past the limit the supervisor stops and lets the node
    go down instead.
    """

    max_restarts: int = attrs.field(validator=attrs.validators.ge(0))
    window: float = attrs.field(validator=attrs.validators.gt(0))
    # Restart times still inside the window, oldest first; never more than
    # max_restarts + 1 of them.
    _times: list[float] = attrs.field(factory=list)

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; False if it is one too many.

        False when, counting this one, more than ``max_restarts`` restarts
        happened within the last ``window`` seconds (a restart exactly
        ``window`` seconds old still counts).  The caller should then stop
        restarting rather than keep recording.
        """
        horizon = now - self.window
        self._times = [t for t in self._times if t >= horizon]
        self._times.append(now)
        # Only whether the count exceeds max_restarts matters, and the most
        # recent max_restarts + 1 entries answer that.
        del self._times[: -(self.max_restarts + 1)]
        return len(self._times) <= self.max_restarts


def _jittered(delay: float, *, rand: Callable[[], float], jitter: float) -> float:
    return delay * (1.0 - jitter + 2.0 * jitter * rand())


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")


def _check_jitter(jitter: float) -> None:
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
