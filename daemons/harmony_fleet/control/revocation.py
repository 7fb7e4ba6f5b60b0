"""Revoking a device: refused from now on, and its live connections closed.

Two connections, two powers:

* ``fleet`` — a FLEET-account admin connection: writes ``revoked.<device>`` in the
  ``device-revocations`` bucket (the auth callout refuses the device from then on, whatever
  token it presents), or deletes it (:func:`restore_device`);
* ``system`` — the NATS system account (``$SYS``), held by the control side only: finds the
  device's live connections on every server of the cluster (``$SYS.REQ.SERVER.PING.CONNZ``;
  each server answers) and closes them (``$SYS.REQ.SERVER.<id>.KICK``, nats-server 2.10+).

The order matters: the revocation is written first, then the connections are closed, so a
kicked agent that reconnects at once is refused. Connections authorized while the
revocation was being written are caught by a second sweep ``settle_s`` later (the server's
authorization timeout bounds how long such an answer can be in flight).

A device is found by its NATS user: the callout names a device's user after its device id
(CONNZ ``authorized_user``, in account FLEET, with an ``issuer_key``: a user the callout
issued, never a static one such as ``writer``, whatever the device id). The client name a
connection gives itself is not trusted. In dev mode (the shared static ``device`` user) the
callout is not asked at all: revocation needs callout mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from harmony_fleet.bus.connection import connect, drain
from harmony_fleet.bus.kv import KVError, delete_entry, ensure_bucket, get_entry, put_entry
from harmony_fleet.bus.settings import NatsSettings
from harmony_fleet.contracts import (
    BUCKET_DEVICE_REVOCATIONS,
    REVOCATIONS_BUCKET,
    SYS_CONNZ_PING_SUBJECT,
    Revocation,
    device_revocation_key,
    sys_kick_subject,
    validate_device_id,
)
from harmony_fleet.contracts.base import utcnow
from harmony_fleet.contracts.identity import FLEET_ACCOUNT
from harmony_fleet.errors import FleetError, InvalidInput

log = logging.getLogger(__name__)

#: How long servers are given to answer a CONNZ ping (every server of a cluster answers).
DEFAULT_SWEEP_S = 1.0
#: The second sweep: after the longest an authorization answered before the revocation can
#: still be in flight (nats-server's authorization timeout, 2 s by default).
DEFAULT_SETTLE_S = 2.0
#: Most connections one CONNZ answer lists (a server's connections of the FLEET account).
CONNZ_LIMIT = 100_000


class SystemAccountError(FleetError):
    """The system account did not do what was asked (no server answered a CONNZ request, a
    KICK was refused): the message says which server and why."""


@dataclass(frozen=True)
class DeviceConnection:
    """One live connection of a device: the server it is on, and its id there."""

    server_id: str
    server_name: str
    cid: int
    host: str = ""


@dataclass(frozen=True)
class RevokeResult:
    """``changed``: the device was not revoked before (or a connection had to be closed);
    ``kicked``: connections closed (in check mode: that would be closed)."""

    device_id: str
    changed: bool
    was_revoked: bool
    kicked: int
    connections: list[DeviceConnection] = field(default_factory=list)
    revocation: Revocation | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class RestoreResult:
    device_id: str
    changed: bool
    was_revoked: bool


def matches_device(conn: dict[str, Any], device_id: str) -> bool:
    """Whether a CONNZ connection entry is ``device_id``'s (pure): a user the callout issued
    (it has an ``issuer_key``) in account FLEET, named after the device."""
    return (conn.get("authorized_user") == device_id and conn.get("account") == FLEET_ACCOUNT
            and bool(conn.get("issuer_key")))


def device_connections(answers: list[dict[str, Any]], device_id: str) -> list[DeviceConnection]:
    """The device's connections in CONNZ answers of any number of servers (pure)."""
    found: list[DeviceConnection] = []
    for answer in answers:
        server = answer.get("server") or {}
        data = answer.get("data") or {}
        for conn in data.get("connections") or []:
            if not isinstance(conn, dict) or not matches_device(conn, device_id):
                continue
            cid = conn.get("cid")
            if isinstance(cid, int) and not isinstance(cid, bool):  # a malformed entry: skip
                found.append(DeviceConnection(str(server.get("id", "")),
                                              str(server.get("name", "")), cid,
                                              str(conn.get("ip", ""))))
    return found


async def _gather(system: NatsClient, subject: str, payload: dict[str, Any],
                  window_s: float) -> list[dict[str, Any]]:
    """Publish one request and collect every answer that arrives within ``window_s`` (a PING
    subject is answered by each server)."""
    inbox = system.new_inbox()
    answers: list[dict[str, Any]] = []
    sub = await system.subscribe(inbox)
    try:
        await system.publish(subject, json.dumps(payload).encode(), reply=inbox)
        await system.flush()
        deadline = time.monotonic() + window_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            try:
                answer = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(answer, dict):
                answers.append(answer)
    finally:
        await sub.unsubscribe()
    return answers


async def find_device_connections(system: NatsClient, device_id: str, *,
                                  window_s: float = DEFAULT_SWEEP_S) -> list[DeviceConnection]:
    """Every live connection of ``device_id`` on every server that answers within
    ``window_s`` (:class:`SystemAccountError` if none does). nats-server answers CONNZ in
    every account, scoped to it (an admin of FLEET sees FLEET's connections); closing them
    takes the system account."""
    device_id = validate_device_id(device_id)
    answers = await _gather(system, SYS_CONNZ_PING_SUBJECT,
                            {"auth": True, "limit": CONNZ_LIMIT, "state": 0,
                             "user": device_id, "acc": FLEET_ACCOUNT}, window_s)
    if not answers:
        raise SystemAccountError(
            f"no server answered {SYS_CONNZ_PING_SUBJECT} within {window_s:g}s: is this a "
            "system account connection?")
    errors = [a["error"] for a in answers if isinstance(a.get("error"), dict)]
    if errors and len(errors) == len(answers):
        raise SystemAccountError(f"CONNZ refused: {errors[0].get('description', errors[0])}")
    return device_connections(answers, device_id)


async def kick(system: NatsClient, connection: DeviceConnection, timeout: float = 2.0) -> bool:
    """Close one connection; True if its server closed it, False if it was gone already."""
    try:
        msg = await system.request(sys_kick_subject(connection.server_id),
                                   json.dumps({"cid": connection.cid}).encode(), timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise SystemAccountError(f"server {connection.server_name or connection.server_id} "
                                 "does not answer KICK: is this a connection of the system account (and "
                                 "nats-server 2.10+)?") from exc
    except nats.errors.TimeoutError as exc:
        raise SystemAccountError(f"server {connection.server_name or connection.server_id} "
                                 f"did not answer KICK within {timeout:g}s") from exc
    try:
        answer = json.loads(msg.data or b"{}")
    except ValueError as exc:
        raise SystemAccountError(f"KICK cid {connection.cid}: the server's answer is not "
                                 "JSON") from exc
    error = answer.get("error") if isinstance(answer, dict) else None
    if error:
        description = str(error.get("description", error)) if isinstance(error, dict) else error
        if "not found" in str(description).lower():  # it closed meanwhile
            return False
        raise SystemAccountError(f"KICK cid {connection.cid} on "
                                 f"{connection.server_name or connection.server_id}: "
                                 f"{description}")
    return True


async def kick_device(system: NatsClient, device_id: str, *,
                      window_s: float = DEFAULT_SWEEP_S) -> int:
    """Close every live connection of ``device_id``; how many were closed."""
    closed = 0
    for connection in await find_device_connections(system, device_id, window_s=window_s):
        if await kick(system, connection):
            log.info("closed connection %d of %s on %s", connection.cid, device_id,
                     connection.server_name or connection.server_id,
                     extra={"device": device_id})
            closed += 1
    return closed


async def device_revocation(fleet: NatsClient, device_id: str) -> Revocation | None:
    """The device's revocation record, None if it is not revoked."""
    key = device_revocation_key(device_id)
    try:
        entry = await get_entry(fleet.jetstream(), BUCKET_DEVICE_REVOCATIONS, key)
    except KVError as exc:
        if "does not exist" in str(exc):  # no bucket: nobody was ever revoked
            return None
        raise
    if entry.value is None:
        return None
    return Revocation.model_validate_json(entry.value)


async def revoke_device(
    fleet: NatsClient,
    system: NatsClient | None,
    device_id: str,
    *,
    reason: str = "",
    revoked_by: str | None = None,
    check_mode: bool = False,
    window_s: float = DEFAULT_SWEEP_S,
    settle_s: float = DEFAULT_SETTLE_S,
) -> RevokeResult:
    """Revoke ``device_id``: record it in ``device-revocations`` (the auth callout refuses
    it from then on, even with a valid token), then close its live connections through the
    system account (``system``; None: record only, the device keeps its connection until its
    NATS user expires). A device that is not known yet can be revoked too (pre-revocation).

    Idempotent: revoking a revoked device writes nothing and, with no connection left,
    reports ``changed=False``. ``check_mode``: nothing is written or closed; the result says
    what would be (``kicked``: the connections that would be closed).
    Raises :class:`~harmony_fleet.bus.kv.KVError`, :class:`SystemAccountError`,
    :class:`~harmony_fleet.contracts.InvalidIdError`."""
    started = time.monotonic()
    device_id = validate_device_id(device_id)
    before = await device_revocation(fleet, device_id)
    revocation = before
    if before is None and not check_mode:
        js = fleet.jetstream()
        await ensure_bucket(js, REVOCATIONS_BUCKET)
        revocation = Revocation(device_id=device_id, revoked_at=utcnow(), reason=reason,
                                revoked_by=revoked_by)
        await put_entry(js, BUCKET_DEVICE_REVOCATIONS, device_revocation_key(device_id),
                        revocation.to_json_bytes())
        log.info("revoked %s", device_id, extra={"device": device_id})
    connections: list[DeviceConnection] = []
    kicked = 0
    if system is not None:
        try:
            connections = await find_device_connections(system, device_id, window_s=window_s)
            if check_mode:
                kicked = len(connections)
            else:
                for connection in connections:
                    kicked += await kick(system, connection)
                if before is None and settle_s > 0:
                    # an authorization answered just before the revocation was written
                    await asyncio.sleep(settle_s)
                    kicked += await kick_device(system, device_id, window_s=window_s)
        except SystemAccountError as exc:
            if check_mode:
                raise
            raise SystemAccountError(
                f"{device_id} is revoked (new connections are refused) but its live "
                f"connections could not be closed ({kicked} closed): {exc}") from exc
    return RevokeResult(device_id, changed=before is None or kicked > 0,
                        was_revoked=before is not None, kicked=kicked, connections=connections,
                        revocation=revocation, elapsed_s=time.monotonic() - started)


async def restore_device(fleet: NatsClient, device_id: str, *,
                         check_mode: bool = False) -> RestoreResult:
    """Lift ``device_id``'s revocation (re-enrollment): the callout lets it in again with a
    valid token. Idempotent (``changed=False`` when it was not revoked)."""
    device_id = validate_device_id(device_id)
    before = await device_revocation(fleet, device_id)
    if before is not None and not check_mode:
        await delete_entry(fleet.jetstream(), BUCKET_DEVICE_REVOCATIONS,
                           device_revocation_key(device_id))
        log.info("restored %s", device_id, extra={"device": device_id})
    return RestoreResult(device_id, changed=before is not None, was_revoked=before is not None)


#: What :func:`apply_device_revocation` reports, besides InvalidInput and InternalError.
REVOCATION_ERRORS: tuple[type[FleetError], ...] = (KVError, SystemAccountError)


async def apply_device_revocation(
    fleet: NatsSettings,
    system: NatsSettings | None,
    device_id: str,
    state: str = "revoked",
    *,
    reason: str = "",
    revoked_by: str | None = None,
    check_mode: bool = False,
) -> dict[str, Any]:
    """On connections of its own: ``state`` ``revoked`` (:func:`revoke_device`, ``system``
    needed to close connections) or ``allowed`` (:func:`restore_device`). Returns
    ``{device_id, state, changed, was_revoked, kicked, elapsed_s}`` (JSON-able; what the
    ``fleet_device_revoke`` module and ``fleet device`` report). Raises
    :class:`~harmony_fleet.bus.ConnectError` and the errors of the two functions."""
    if state not in ("revoked", "allowed"):
        raise InvalidInput(f"state must be revoked or allowed, got {state!r}")
    device_id = validate_device_id(device_id)
    nc = await connect(fleet, name="fleet-revocation")
    sys_nc = None
    try:
        if state == "allowed":
            restored = await restore_device(nc, device_id, check_mode=check_mode)
            return {"device_id": device_id, "state": state, "changed": restored.changed,
                    "was_revoked": restored.was_revoked, "kicked": 0, "elapsed_s": 0.0}
        if system is not None:
            sys_nc = await connect(system, name="fleet-revocation-system")
        revoked = await revoke_device(nc, sys_nc, device_id, reason=reason,
                                      revoked_by=revoked_by, check_mode=check_mode)
        return {"device_id": device_id, "state": state, "changed": revoked.changed,
                "was_revoked": revoked.was_revoked, "kicked": revoked.kicked,
                "elapsed_s": round(revoked.elapsed_s, 3)}
    finally:
        if sys_nc is not None:
            await drain(sys_nc)
        await drain(nc)


def set_device_revocation(
    fleet: NatsSettings,
    system: NatsSettings | None,
    device_id: str,
    state: str = "revoked",
    *,
    reason: str = "",
    revoked_by: str | None = None,
    check_mode: bool = False,
) -> dict[str, Any]:
    """:func:`apply_device_revocation`, blocking (what the Ansible module calls)."""
    return asyncio.run(apply_device_revocation(fleet, system, device_id, state, reason=reason,
                                               revoked_by=revoked_by, check_mode=check_mode))
