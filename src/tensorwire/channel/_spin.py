"""How long a waiter polls before it sleeps: a fixed budget, stretched to what waits took.

A process that sleeps between messages wakes slowly on the VMs here and runs its next
request's code with cold caches. The fixed budget (``spin_us``, 200 µs by default) covers a
small call's wait, not that of a call with a millisecond of work on the other side (a
bfloat16 call of a few MB: each side casts it). So where the cores allow it, a waiter whose
recent waits ended within ``STRETCH_MAX_S`` polls for about as long as they took (``STRETCH``
times their running mean, at most the cap), and the fixed budget stays the floor (0 turns
polling off altogether). Longer waits are not chased: the waiter polls its fixed budget,
then sleeps. So the CPU spent polling is at most the cap per wait, and only while the other
side answers about as fast as a sleep would wake. BENCHMARKS.md has what it gained and cost
(`benchmarks/spin.py`).

Stretching is on with four or more usable CPUs, while the 1-minute load average stays below
their number: on fewer, or on a machine whose CPUs are all taken (a test suite run with
many workers, say), a polling client and a polling server take the cores the work itself
needs. ``TENSORWIRE_STRETCH_SPIN=0`` turns it off, ``=1`` on, whatever the CPUs and the load;
an in-process ``tw.Server`` keeps to its fixed budget.
"""

from __future__ import annotations

import os
import time

ENV = "TENSORWIRE_STRETCH_SPIN"
STRETCH_MAX_S = 3e-3  # the longest wait that is polled for
STRETCH = 1.5  # polled for: this many times the mean recent wait
_WEIGHT = 0.25  # of the newest wait in the running mean
_MIN_CPUS = 4
_LOAD_EVERY_S = 0.5  # how often the load average is looked at again


def forced() -> bool | None:
    """What the environment says: True (=1), False (=0), or None (unset: decide by CPUs)."""
    value = os.environ.get(ENV, "")
    if not value:
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stretch_enabled() -> bool:
    """Whether spins stretch in this process (the environment, else the CPU count)."""
    decided = forced()
    return usable_cpus() >= _MIN_CPUS if decided is None else decided


class _Load:
    """Whether every CPU is taken: the 1-minute load average at least the usable CPUs,
    looked at no more than every ``_LOAD_EVERY_S`` (shared by this process's waiters)."""

    def __init__(self) -> None:
        self.cpus, self.busy, self._next = usable_cpus(), False, 0.0

    def full(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + _LOAD_EVERY_S
            try:
                self.busy = os.getloadavg()[0] >= self.cpus
            except OSError:  # no load average here: only the CPU count decides
                self.busy = False
        return self.busy


_LOAD = _Load()


class Spin:
    """One waiter's polling budget (seconds): ``budget`` now, ``waited(s)`` after each wait.

    Starts at the fixed budget: the running mean begins above the cap, so only a few short
    waits in a row stretch it. Not locked: threads sharing one may lose an update, which
    only moves the budget a little."""

    __slots__ = ("base", "budget", "_mean", "_stretch", "_by_load")

    def __init__(self, base: float, stretch: bool | None = None) -> None:
        self.base = self.budget = base
        self._stretch = base > 0 and (stretch_enabled() if stretch is None else stretch)
        # Chosen by the CPU count (neither the caller nor the environment said): then the
        # load average has a say too.
        self._by_load = stretch is None and forced() is None
        self._mean = 2 * STRETCH_MAX_S

    def waited(self, seconds: float) -> None:
        """A wait ended after `seconds`: update the budget for the next one."""
        if not self._stretch:
            return
        mean = self._mean = self._mean + _WEIGHT * (min(seconds, 2 * STRETCH_MAX_S) - self._mean)
        if mean > STRETCH_MAX_S or (self._by_load and _LOAD.full()):
            self.budget = self.base
        else:
            self.budget = max(self.base, min(STRETCH * mean, STRETCH_MAX_S))
