"""The auth callout: answers ``$SYS.REQ.USER.AUTH`` with a user JWT or a denial.

Per request: open the sealed request if the server uses an xkey; verify the request JWT (its
issuer is the server's own key and equals ``server_id.id``, audience
``nats-authorization-request``); validate the bearer token from ``connect_opts.auth_token``;
build the user JWT (``sub`` = the connection's one-time ``user_nkey``, ``aud`` = the target
account, permissions from the identity, ``exp`` no later than the token's); sign the answer
with the issuer account key. Any failure is a denial whose reason is logged (never the token)
and counted. The service never crashes on a request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Histogram

from harmony_fleet.bus.connection import QUEUE_HANDOVER_S, drain_subscription
from harmony_fleet.contracts.identity import ADMIN_ROLES, DEVICE_ROLE, FLEET_ACCOUNT
from harmony_fleet.errors import FleetError

from .config import DEFAULT_MAX_USER_JWT_S
from .nkjwt import NatsJwtError, NKeyPair, XKeyPair, decode_jwt, encode_jwt
from .oidc import Identity, TokenRejected, TokenValidator
from .permissions import admin_permissions, device_permissions, user_claims_nats
from .revocations import RevocationCheck, RevocationUnknown

log = logging.getLogger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE_GROUP = "fleet-callout"
REQUEST_AUDIENCE = "nats-authorization-request"

DECISIONS = Counter("fleet_callout_decisions_total", "Auth callout decisions",
                    ["decision", "reason"])
LATENCY = Histogram("fleet_callout_seconds", "Time to answer an auth request",
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2))


class Denied(FleetError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class CalloutPolicy:
    """Who gets which permissions (from ``[callout]``; its defaults live there)."""

    target_account: str = FLEET_ACCOUNT
    device_role: str = DEVICE_ROLE
    admin_roles: frozenset[str] = ADMIN_ROLES
    max_user_jwt_s: int = DEFAULT_MAX_USER_JWT_S


def user_permissions(identity: Identity, policy: CalloutPolicy) -> tuple[str, dict[str, Any]]:
    """Pure: (name, permissions) for an identity, or :class:`Denied`."""
    if identity.roles & policy.admin_roles:
        return f"admin:{identity.name}", admin_permissions()
    if policy.device_role in identity.roles:
        if identity.device_id is None:
            raise Denied("no-device-id", f"{identity.subject} has the device role but no "
                                         "device_id metadata")
        return identity.device_id, device_permissions(identity.device_id)
    raise Denied("no-fleet-role", f"{identity.subject} has no fleet role")


class CalloutService:
    def __init__(
        self, nc: NatsClient, issuer: NKeyPair, validator: TokenValidator,
        policy: CalloutPolicy | None = None, xkey: XKeyPair | None = None, *,
        revocations: RevocationCheck | None = None,
    ) -> None:
        self._nc = nc
        self._revocations = revocations
        self._issuer = issuer
        self._validator = validator
        self.policy = policy or CalloutPolicy()
        self._xkey = xkey
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(AUTH_SUBJECT, queue=QUEUE_GROUP, cb=self._on_request)
        await self._nc.flush()
        log.info("answering %s (queue %s)", AUTH_SUBJECT, QUEUE_GROUP)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop taking auth requests; those already delivered are still answered (within
        ``timeout``, while the connection is up): a client connecting right now gets its
        answer instead of waiting for the server to give up on the callout."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            # other replicas of the callout (a rolling update) take over the queue group
            await drain_subscription(self._nc, sub, timeout, handover_s=QUEUE_HANDOVER_S)

    async def _on_request(self, msg: Msg) -> None:
        started = time.perf_counter()
        try:
            await self._answer(msg)
        except Exception:  # the last line of defence: no reply = denied by the server
            log.exception("auth request handling failed")
            DECISIONS.labels(decision="deny", reason="internal").inc()
        LATENCY.observe(time.perf_counter() - started)

    async def _refuse_revoked(self, device_id: str) -> None:
        """:class:`Denied` if the device is revoked, or if that cannot be told (fail closed)."""
        if self._revocations is None:
            return
        try:
            revocation = await self._revocations.revocation(device_id)
        except RevocationUnknown as exc:
            raise Denied("revocation-check-failed", str(exc)) from exc
        if revocation is not None:
            why = f": {revocation.reason}" if revocation.reason else ""
            raise Denied("revoked", f"device {device_id} is revoked since "
                                    f"{revocation.revoked_at.isoformat()}{why}")

    async def _answer(self, msg: Msg) -> None:
        server_xkey = (msg.headers or {}).get("Nats-Server-Xkey")
        try:
            data = bytes(msg.data)
            if server_xkey:
                if self._xkey is None:
                    raise Denied("xkey", "request is sealed but this callout has no xkey")
                data = self._xkey.open(server_xkey, data)
            request = decode_jwt(data.decode())
        except (NatsJwtError, UnicodeDecodeError, Denied) as exc:
            # without a readable request there is nobody to address a signed answer to
            log.warning("unreadable auth request: %s", exc)
            DECISIONS.labels(decision="deny", reason="bad-request").inc()
            return
        nats_claims = request.get("nats") or {}
        server_id = str((nats_claims.get("server_id") or {}).get("id", ""))
        user_nkey = str(nats_claims.get("user_nkey", ""))
        client = nats_claims.get("client_info") or {}
        answer: dict[str, Any] = {"sub": user_nkey, "aud": server_id,
                                  "nats": {"type": "authorization_response", "version": 2}}
        try:
            if request.get("aud") != REQUEST_AUDIENCE or request.get("iss") != server_id:
                raise Denied("bad-request", "request issuer/audience do not match the server")
            if not user_nkey.startswith("U"):
                raise Denied("bad-request", "request has no user nkey")
            token = (nats_claims.get("connect_opts") or {}).get("auth_token")
            if not token:
                raise Denied("no-token", "the client presented no bearer token")
            try:
                identity = await self._validator.validate(str(token))
            except TokenRejected as exc:
                raise Denied(exc.reason, str(exc)) from exc
            name, permissions = user_permissions(identity, self.policy)
            if identity.device_id is not None and name == identity.device_id:
                await self._refuse_revoked(identity.device_id)
            expires = min(identity.expires_at, int(time.time()) + self.policy.max_user_jwt_s)
            user = {"sub": user_nkey, "aud": self.policy.target_account, "name": name,
                    "exp": expires, "nats": user_claims_nats(permissions)}
            answer["nats"]["jwt"] = encode_jwt(user, self._issuer)
            DECISIONS.labels(decision="allow", reason="device" if identity.device_id and
                             name == identity.device_id else "admin").inc()
            log.info("allowed %s (%s) from %s until %d", name, identity.subject,
                     client.get("host", "?"), expires)
        except Denied as exc:
            answer["nats"]["error"] = f"denied: {exc.reason}"
            DECISIONS.labels(decision="deny", reason=exc.reason).inc()
            log.warning("denied connection from %s (%s): %s", client.get("host", "?"),
                        client.get("name", ""), exc)
        out = encode_jwt(answer, self._issuer).encode()
        if server_xkey and self._xkey is not None:
            out = self._xkey.seal(server_xkey, out)
        if msg.reply:
            await self._nc.publish(msg.reply, out)
