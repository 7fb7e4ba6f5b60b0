"""How a device gets its desired-state watch without any JetStream API rights of its own.

A device may not create consumers (it could create them until the stream's limit, starving
every other device) and may not choose where the server delivers (JetStream publishes a push
consumer's messages, and direct-get replies, on the device's behalf: its own publish
permissions are never checked, so a delivery subject of ``device-commands.<other>.exec`` would
land there). So the device *asks*: it subscribes to a fresh subject under its own inbox
prefix and requests ``fleet.watch.<device>`` with that subject; the server side (the report
writer) checks that the subject is the device's own inbox, then replaces the device's one
consumer on ``KV_desired-state`` — its name is fixed per device, so asking again replaces it,
never adds one — filtered to ``$KV.desired-state.<device>.>`` and delivering there.

=================================  =====================  ==============================
subject                            request                reply
=================================  =====================  ==============================
``fleet.watch.<device>``           :class:`WatchRequest`  :class:`WatchReply`
=================================  =====================  ==============================
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import Field

from harmony_fleet.errors import FleetError

from .base import WireModel
from .ids import InvalidIdError, validate_device_id

WATCH_SUBJECT_PREFIX: Final = "fleet.watch"
#: Every device's client connections use ``_INBOX.<device>`` as their inbox prefix; it is the
#: only subject space the device may subscribe to besides its commands.
INBOX_PREFIX: Final = "_INBOX"
#: The consumer a device's watch runs on is ``fleet-agent-<device>`` (one per device).
DEVICE_CONSUMER_PREFIX: Final = "fleet-agent-"
MIN_WATCH_HEARTBEAT_S: Final = 0.5
MAX_WATCH_HEARTBEAT_S: Final = 30.0
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DELIVER_SUBJECT_LENGTH: Final = 255


class WatchSubjectError(FleetError, ValueError):
    """A subject is not ``fleet.watch.<device>``."""


def device_inbox_prefix(device_id: str) -> str:
    """``_INBOX.<device>``: the inbox prefix of every connection a device opens."""
    return f"{INBOX_PREFIX}.{validate_device_id(device_id)}"


def device_consumer_name(device_id: str) -> str:
    """The name of the device's one consumer on the desired-state stream."""
    return f"{DEVICE_CONSUMER_PREFIX}{validate_device_id(device_id)}"


def watch_request_subject(device_id: str) -> str:
    """``fleet.watch.<device>``: where a device asks for its watch."""
    return f"{WATCH_SUBJECT_PREFIX}.{validate_device_id(device_id)}"


def watch_subscription() -> str:
    """What the server side subscribes to."""
    return f"{WATCH_SUBJECT_PREFIX}.*"


def parse_watch_subject(subject: str) -> str:
    """The device id of ``fleet.watch.<device>``."""
    prefix = f"{WATCH_SUBJECT_PREFIX}."
    if not subject.startswith(prefix):
        raise WatchSubjectError(f"{subject!r} is not a watch subject")
    try:
        return validate_device_id(subject[len(prefix):])
    except InvalidIdError as exc:
        raise WatchSubjectError(f"{subject!r}: {exc}") from exc


def is_device_inbox(device_id: str, subject: str) -> bool:
    """True when ``subject`` is a literal subject inside the device's own inbox space
    (``_INBOX.<device>.<token>[.<token>...]``: no wildcards, nothing else's)."""
    if not subject or len(subject) > MAX_DELIVER_SUBJECT_LENGTH:
        return False
    tokens = subject.split(".")
    if tokens[:2] != [INBOX_PREFIX, device_id] or len(tokens) < 3:
        return False
    return all(_SUBJECT_TOKEN.fullmatch(t) for t in tokens[2:])


class WatchRequest(WireModel):
    """A device asks for its desired-state watch to be (re)started, delivering to
    ``deliver_subject`` (a subject under its own inbox, which it already subscribes to)."""

    deliver_subject: str = Field(min_length=1, max_length=MAX_DELIVER_SUBJECT_LENGTH)
    idle_heartbeat_s: float = Field(default=5.0, ge=MIN_WATCH_HEARTBEAT_S,
                                    le=MAX_WATCH_HEARTBEAT_S)


class WatchReply(WireModel):
    """``ok`` with the consumer and how many values its initial snapshot holds, or why not."""

    ok: bool
    error: str | None = None
    consumer: str | None = None
    num_pending: int = Field(default=0, ge=0)
    retry_after_s: float | None = Field(default=None, ge=0,
                                        description="refused for now: ask again after this")
    #: set when refused because another agent instance holds the device
    in_use_by: str | None = None
