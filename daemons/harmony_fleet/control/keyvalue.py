"""Read and write single entries of the fleet's buckets (the ``fleet_kv`` module and lookup).

Every key is checked against its bucket's format (the contract's parsers) before anything is
sent. Reads cover the four buckets. Writes cover ``desired-state`` only: the three report
buckets are written by the report writer alone, from what agents report, and a value put there
by hand would be a report no agent made. A desired-state value must be a valid workload (a
:class:`~harmony_fleet.contracts.PodmanScore`, whose ``secrets`` can hold only sealed
envelopes, never plaintext); it is stored in the canonical form ``fleet_deployment`` writes,
so the two agree on what is unchanged.

Values are shown decoded (JSON when they are JSON, else text) and, in ``desired-state``, with
every sealed value redacted: an envelope is never shown (README, "Secrets").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from harmony_fleet.bus.kv import KVEntry, RevisionMismatch, delete_entry, get_entry, put_entry, read_entries
from harmony_fleet.contracts import (
    BUCKET_DESIRED_STATE,
    PodmanScore,
    parse_bucket_key,
    validate_key_filter,
    validation_summary,
)
from harmony_fleet.errors import InvalidInput
from harmony_fleet.planning import check_value_size, same_value, score_bytes, shown_value

#: The buckets a client may write; the others hold reports, which only the report writer puts.
WRITABLE_BUCKETS = frozenset({BUCKET_DESIRED_STATE})


def shown(bucket: str, raw: bytes | None, before: bytes | None = None) -> Any:
    """A value fit to show: JSON decoded (text when it is not JSON), sealed values of a
    desired-state score redacted (marked changed against ``before``); None for no value."""
    if raw is None:
        return None
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode("utf-8", errors="replace")
    if bucket == BUCKET_DESIRED_STATE and isinstance(decoded, dict):
        return shown_value(raw, before)
    return decoded


def _entry_doc(bucket: str, entry: KVEntry) -> dict[str, Any]:
    return {"bucket": bucket, "key": entry.key, "exists": entry.value is not None,
            "revision": entry.revision if entry.value is not None else None,
            "value": shown(bucket, entry.value)}


def _writable(bucket: str, key: str) -> None:
    parse_bucket_key(bucket, key)
    if bucket not in WRITABLE_BUCKETS:
        raise InvalidInput(f"{bucket} holds device reports, written by the report writer only; "
                           f"only {', '.join(sorted(WRITABLE_BUCKETS))} can be written")


def score_value(value: Any) -> bytes:
    """The desired-state bytes for ``value`` (a score as a mapping, or JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidInput("value: a desired-state value is a score, as a mapping or JSON "
                               "text; this is not JSON") from None
    try:
        return check_value_size(score_bytes(PodmanScore.model_validate(value)), "value")
    except ValidationError as exc:  # the summary names fields and rules, never values
        raise InvalidInput(f"value is not a valid score: {validation_summary(exc)}") from None


@dataclass(frozen=True)
class KeyChange:
    """What a write did (or, in check mode, would do)."""

    bucket: str
    key: str
    changed: bool
    before: KVEntry
    after_value: bytes | None
    after_revision: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket, "key": self.key, "changed": self.changed,
            "exists": self.after_value is not None, "revision": self.after_revision,
            "value": shown(self.bucket, self.after_value),
            "diff": {
                "before": shown(self.bucket, self.before.value),
                "after": shown(self.bucket, self.after_value, self.before.value),
                "before_header": _header(self.bucket, self.key, self.before.value,
                                         self.before.revision),
                "after_header": _header(self.bucket, self.key, self.after_value,
                                        self.after_revision),
            },
        }


def _header(bucket: str, key: str, value: bytes | None, revision: int | None) -> str:
    if value is None:
        return f"{bucket} {key} (no value)"
    return f"{bucket} {key} (revision {revision})" if revision else f"{bucket} {key}"


def _check_revision(entry: KVEntry, bucket: str, revision: int | None) -> int | None:
    """The ``last`` to write with for an expected ``revision`` (0: the key has no value);
    :class:`RevisionMismatch` when the key is elsewhere already."""
    if revision is None:
        return None
    current = entry.revision if entry.value is not None else None
    if revision == 0:
        if current is not None:
            raise RevisionMismatch(bucket, entry.key, 0, current)
        return entry.revision or 0  # a deleted key: write over its delete marker
    if current != revision:
        raise RevisionMismatch(bucket, entry.key, revision, current)
    return revision


async def read_key(nc: NatsClient, bucket: str, key: str, *,
                   revision: int | None = None) -> dict[str, Any]:
    """The key's value and revision now (or at ``revision``, while the history holds it)."""
    parse_bucket_key(bucket, key)
    return _entry_doc(bucket, await get_entry(nc.jetstream(), bucket, key, revision=revision))


async def read_keys(nc: NatsClient, bucket: str, pattern: str) -> dict[str, Any]:
    """key -> shown value of every key matching ``pattern`` (a key or a wildcard filter)."""
    validate_key_filter(bucket, pattern)
    entries = await read_entries(nc.jetstream(), bucket, pattern)
    return {key: shown(bucket, e.value) for key, e in sorted(entries.items())}


async def write_key(nc: NatsClient, bucket: str, key: str, value: Any, *,
                    revision: int | None = None, check_mode: bool = False) -> KeyChange:
    """Make ``key`` hold ``value``: an unchanged value is not rewritten (whatever ``revision``
    says); a changed one is written only if the key is at ``revision`` (when given)."""
    _writable(bucket, key)
    wanted = score_value(value)
    js = nc.jetstream()
    before = await get_entry(js, bucket, key)
    if before.value is not None and same_value(before.value, wanted):
        return KeyChange(bucket, key, False, before, before.value, before.revision)
    last = _check_revision(before, bucket, revision)
    if check_mode:
        return KeyChange(bucket, key, True, before, wanted, None)
    new_revision = await put_entry(js, bucket, key, wanted, last=last)
    return KeyChange(bucket, key, True, before, wanted, new_revision)


async def delete_key(nc: NatsClient, bucket: str, key: str, *, revision: int | None = None,
                     check_mode: bool = False) -> KeyChange:
    """Delete ``key`` if it has a value (only at ``revision``, when given)."""
    _writable(bucket, key)
    js = nc.jetstream()
    before = await get_entry(js, bucket, key)
    if before.value is None:
        return KeyChange(bucket, key, False, before, None, None)
    if revision is not None and before.revision != revision:
        raise RevisionMismatch(bucket, key, revision, before.revision)
    if not check_mode:
        await delete_entry(js, bucket, key, last=revision)
    return KeyChange(bucket, key, True, before, None, None)
