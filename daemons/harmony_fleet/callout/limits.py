"""Pure bookkeeping that bounds what one device can make the server side do.

* :class:`RateLimiter` — a token bucket per device: a device that sends faster than its rate
  (after a burst) is refused cheaply, before any parsing or KV write, with how long to wait;
* :class:`DesiredIndex` — which deployments each device is told to run (from the
  desired-state bucket), and which were removed recently: the report writer stores state only
  for those, so a device cannot create keys for deployments that do not exist;
* :class:`LeaseBook` — which agent instance runs each device id: one at a time;
(:class:`harmony_fleet.daemon.LogThrottle` keeps the log of refusals short.)

No I/O and no clock of their own: every call takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harmony_fleet.contracts import same_boot

_EPSILON = 1e-9


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens: 0.0 if allowed, else the seconds until it would be."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost - _EPSILON:  # waiting exactly as told must be enough
            self.tokens = max(0.0, self.tokens - cost)
            return 0.0
        return (cost - self.tokens) / self.rate


@dataclass
class RateLimiter:
    """A :class:`TokenBucket` per key (device id). Idle keys are forgotten once full again,
    so memory follows the number of recently active devices."""

    rate: float
    burst: float
    max_keys: int = 100_000
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")

    def check(self, key: str, now: float) -> float:
        """0.0 when ``key`` may proceed now, else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_idle(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now)

    def _forget_idle(self, now: float) -> None:
        full_after = self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class DesiredIndex:
    """Deployments desired per device, and when removed ones went away.

    Fed from the desired-state bucket: :meth:`put` for a value, :meth:`delete` for a delete or
    purge marker (with the time it happened, so a restarted writer still knows the grace).
    """

    removed_grace_s: float
    _desired: dict[str, set[str]] = field(default_factory=dict)
    _removed: dict[str, dict[str, float]] = field(default_factory=dict)

    def put(self, device: str, deployment: str) -> None:
        self._desired.setdefault(device, set()).add(deployment)
        removed = self._removed.get(device)
        if removed is not None:
            removed.pop(deployment, None)

    def delete(self, device: str, deployment: str, at: float) -> None:
        desired = self._desired.get(device)
        if desired is not None:
            desired.discard(deployment)
            if not desired:
                del self._desired[device]
        self._removed.setdefault(device, {})[deployment] = at

    def is_desired(self, device: str, deployment: str) -> bool:
        return deployment in self._desired.get(device, ())

    def recently_removed(self, device: str, deployment: str, now: float) -> bool:
        at = self._removed.get(device, {}).get(deployment)
        return at is not None and now - at <= self.removed_grace_s

    def deployments(self, device: str) -> frozenset[str]:
        return frozenset(self._desired.get(device, ()))

    def key_count(self) -> int:
        """How many (device, deployment) pairs are desired."""
        return sum(len(d) for d in self._desired.values())

    def prune(self, now: float) -> None:
        """Forget removals older than the grace period."""
        for device in list(self._removed):
            kept = {d: at for d, at in self._removed[device].items()
                    if now - at <= self.removed_grace_s}
            if kept:
                self._removed[device] = kept
            else:
                del self._removed[device]


@dataclass(frozen=True)
class Lease:
    """The agent instance that runs a device, as last seen by the writer."""

    instance: str | None  # None: an agent from before instance ids (holds nothing)
    seen: float  # wall-clock seconds (the writer's clock, or the server's entry timestamp)
    revision: int = 0  # of its heartbeat entry (compare-and-set between writer replicas)


@dataclass
class LeaseBook:
    """One live agent per device id.

    A device's lease is held by the agent instance whose reports the writer accepted last; it
    lapses ``ttl_s`` after that. Another instance is refused while the lease is held — unless
    it runs in the same boot of the same host: every agent holds the host's lock for its
    device id before it connects, so a second instance there means the first one is gone (a
    restart), while a clone elsewhere (a copied SD card, a reused config) has another boot.
    Reports from agents older than instance ids (``None``) cannot be judged and pass.
    """

    ttl_s: float
    _leases: dict[str, Lease] = field(default_factory=dict)

    def holder(self, device: str) -> Lease | None:
        return self._leases.get(device)

    def conflict(self, device: str, instance: str | None, now: float) -> Lease | None:
        """The live lease of *another* instance that refuses ``instance`` now, else None."""
        lease = self._leases.get(device)
        if instance is None or lease is None or lease.instance in (None, instance):
            return None
        if now - lease.seen > self.ttl_s or same_boot(lease.instance, instance):
            return None
        return lease

    def record(self, device: str, instance: str | None, seen: float,
               revision: int | None = None) -> None:
        """``instance`` holds the device as of ``seen``; ``revision`` is its heartbeat entry's."""
        old = self._leases.get(device)
        if old is not None and old.instance == instance and old.seen > seen:
            seen = old.seen  # an older entry read back from the bucket never rewinds a lease
        self._leases[device] = Lease(instance, seen, revision if revision is not None
                                     else (old.revision if old else 0))

    def forget(self, device: str) -> None:
        self._leases.pop(device, None)
