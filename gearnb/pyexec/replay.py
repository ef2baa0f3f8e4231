"""The worker's replay guard: a signed call runs once per worker process, and only while valid.

A call's signed header holds a random nonce, its creation time and how long it stays valid
(:mod:`gearnb.pyexec.signing`): it *expires* at ``created + ttl``. :meth:`ReplayGuard.admit`
runs before anything in the call is unpacked and refuses, saying which rule:

1. a call created more than ``MAX_CLOCK_SKEW`` in the future (the caller's clock is wrong);
2. a call past its expiry: it waited longer than its ttl, or was captured and sent again later;
3. a call whose nonce this process ran before under another job handle: a replay. The *same*
   job handle again is the job server giving the same job back (it requeued it after losing
   this worker's connection), and runs again;
4. a call expiring at or before the *horizon*: this process has forgotten calls that expire
   that early, so it cannot tell whether it ran this one.

The seen-set remembers up to ``SEEN_CAPACITY`` nonces, grouped by the second they expire in.
Calls past their expiry are forgotten freely (rule 2 refuses them); when it is full of
unexpired calls, the second expiring first is forgotten and the horizon rises to its end, so
every call this process ran is either remembered or refused by rule 2 or 4: none runs twice
here. Forgetting the
earliest-expiring first keeps the calls signed with a long ttl (a background or epoch call that
may wait hours) while a flood of ordinary calls passes through.

Rule 1 is refused in plain text. Rules 2-4 concern a genuine call (its MAC checked), so the
worker answers :class:`NotRun` signed for that call: its caller, and only its caller, can trust
it and sends the work again as a new call (up to ``signing.MAX_SIGN_AGAIN`` times); a replayer
learns nothing.

Legitimate repeats: a job requeued after its worker died reaches another process (another
seen-set); a call a client sends to a second job server after losing the first may reach the
process that ran it (rule 3: its caller signs it again); a retry is a new call with a new
nonce; a background or epoch call waits as long as the ttl it was signed with allows.
"""

from __future__ import annotations

import heapq
import time

from .signing import HEADER, CallId, RefusedPayload


class NotRun(RefusedPayload):
    """A genuine call this worker does not run (rules 2-4): the runner says so in an answer
    signed for the call, so its caller can send it again as a new call."""

# A caller's clock may run this far ahead of the worker's (Kerberos' default skew, 5 minutes).
MAX_CLOCK_SKEW = 300.0
# Nonces remembered per worker process, as jupyter_client's digest history (2**16): ~9 MB at
# most (tests/test_pyexec.py measures it). Rule 4 refuses an ordinary call only if this process
# ran more than this many calls expiring later than it while it waited: with FIFO queues that
# takes high-priority traffic or another job server's flood.
SEEN_CAPACITY = 65_536
# The seen-set's grain: the calls expiring within one second are forgotten together. A process
# runs far fewer than SEEN_CAPACITY calls a second (~3,000 with empty tasks here), so the second
# forgotten is always seconds older than the calls arriving now, whose expiry stays above it.
BUCKET_SECONDS = 1


class ReplayGuard:
    """Which calls this worker process may run (see the module docstring for the rules)."""

    __slots__ = ("buckets", "order", "size", "horizon")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[bytes, bytes]] = {}  # expiry second -> nonce -> job handle
        self.order: list[int] = []  # the keys of ``buckets``, a heap: the first to expire on top
        self.size = 0
        self.horizon = float("-inf")  # calls expiring at or before this are refused (rule 4)

    def admit(self, call: CallId, handle: bytes, now: float | None = None) -> None:
        """Record ``call`` as run under ``handle``; raises :class:`RefusedPayload` (saying
        which rule) if it must not run."""
        now = time.time() if now is None else now
        nonce, created_us, ttl = HEADER.unpack(call.header)
        created = created_us / 1e6
        if created > now + MAX_CLOCK_SKEW:
            raise RefusedPayload(
                f"the call was made {created - now:.0f} s in the future by the caller's clock (more than "
                f"{MAX_CLOCK_SKEW:.0f} s ahead of this worker's): set the clocks right (NTP)")
        expiry = created + ttl
        if now > expiry:
            raise NotRun(
                f"the call is stale: made {_duration(now - created)} ago, valid for {_duration(ttl)} (it waited "
                f"in a queue longer than that, or it was captured and sent again); submit it again")
        second = int(expiry // BUCKET_SECONDS)
        bucket = self.buckets.get(second)
        seen = bucket.get(nonce) if bucket is not None else None
        if seen is not None:
            if seen == handle:
                return  # the job server gave the same job back (rule 3): it runs again
            raise NotRun(
                f"the call ran on this worker before (as job {seen.decode(errors='replace')}, now "
                f"{handle.decode(errors='replace')}): a replayed payload, or its client sent it to another job "
                f"server after losing the first; a caller sends the work again as a new call")
        if expiry <= self.horizon:
            raise NotRun(
                f"this worker ran more than {SEEN_CAPACITY} calls expiring later than this one while it waited "
                f"({_duration(now - created)}), and forgot the older ones, so it cannot tell whether it ran it "
                f"already; submit it again (or sign calls that wait long with a longer ttl)")
        if self.size >= SEEN_CAPACITY:
            self._make_room(now)
            bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = {}
            heapq.heappush(self.order, second)
        bucket[nonce] = handle
        self.size += 1

    def _make_room(self, now: float) -> None:
        """Forget the seconds that expired; if still full, the second expiring first (raising
        the horizon to its end)."""
        order, buckets = self.order, self.buckets
        while order and (order[0] + 1) * BUCKET_SECONDS <= now:
            self.size -= len(buckets.pop(heapq.heappop(order)))
        while self.size >= SEEN_CAPACITY:
            second = heapq.heappop(order)
            self.size -= len(buckets.pop(second))
            self.horizon = max(self.horizon, (second + 1) * BUCKET_SECONDS)

    def __len__(self) -> int:
        return self.size


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
