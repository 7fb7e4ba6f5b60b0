"""What every response carries, what every POST proves, and the sessions behind both.

* :data:`SECURITY_HEADERS` on every response (pages, fragments, static files, SSE, errors):
  the CSP allows scripts, styles and connections from the dashboard's own origin only, no
  plugin, no framing. There is no ``unsafe-inline`` in any mode.
* Sessions are server-side (a random id in an HttpOnly, SameSite=Lax cookie; nothing else in
  the browser); each holds a CSRF token that every POST must echo (form field or header) and
  POSTs from another origin are refused whatever they carry.
* The Host header must name this dashboard (DNS rebinding: a page on an attacker's domain that
  resolves to 127.0.0.1 would otherwise read a loopback dashboard as its own origin).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
              "frame-ancestors 'none'")

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=(), payment=()",
}

SESSION_COOKIE: Final = "fleet_session"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"


@dataclass
class Session:
    id: str
    csrf: str
    created: float
    expires: float
    user: str | None = None
    name: str | None = None
    roles: frozenset[str] = frozenset()
    id_token: str | None = None
    #: the login in progress: state -> (PKCE verifier, nonce, where to go after)
    pending: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    log_streams: int = 0

    @property
    def authenticated(self) -> bool:
        return self.user is not None


class SessionStore:
    """Sessions in memory: at most ``capacity`` anonymous ones (made for any browser that
    comes without a cookie) and as many logged-in ones, the least recently used dropped
    first within each kind, so a flood of cookie-less requests never logs anyone out."""

    def __init__(self, *, ttl_s: float, capacity: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._users: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str | None, now: float | None = None) -> Session | None:
        if not session_id:
            return None
        now = time.time() if now is None else now
        for sessions in (self._users, self._anonymous):
            session = sessions.get(session_id)
            if session is None:
                continue
            if session.expires <= now:
                del sessions[session_id]
                return None
            sessions.move_to_end(session_id)
            return session
        return None

    def _add(self, sessions: OrderedDict[str, Session], session: Session) -> Session:
        sessions[session.id] = session
        while len(sessions) > self.capacity:
            sessions.popitem(last=False)
        return session

    def new(self, now: float | None = None) -> Session:
        now = time.time() if now is None else now
        return self._add(self._anonymous, Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now + self.ttl_s))

    def rotate(self, session: Session) -> Session:
        """A new id and CSRF token for ``session``, now logged in (no session fixation)."""
        self.drop(session)
        now = time.time()
        fresh = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now,
                        now + self.ttl_s, user=session.user, name=session.name,
                        roles=session.roles, id_token=session.id_token)
        return self._add(self._users, fresh)

    def drop(self, session: Session) -> None:
        self._anonymous.pop(session.id, None)
        self._users.pop(session.id, None)

    def __len__(self) -> int:
        return len(self._anonymous) + len(self._users)


def csrf_ok(session: Session | None, supplied: str | None) -> bool:
    return bool(session is not None and supplied and
                hmac.compare_digest(session.csrf.encode(), supplied.encode()))


def same_origin(headers: Any, own_origin: str) -> bool:
    """A POST's Origin (or, without it, Sec-Fetch-Site) says it comes from this dashboard."""
    origin = headers.get("Origin")
    if origin is not None:
        return bool(origin == own_origin)
    site = headers.get("Sec-Fetch-Site")
    return site in (None, "same-origin")


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    return host is not None and host.lower() in allowed
