"""A small Kubernetes REST client for the operator's own writes (Device CRs, status, Lease).

kopf drives the watches and handlers; the writes the operator makes outside handlers go
through this client: plain JSON over HTTPS with merge patches, the same credentials kopf uses
(in-cluster service account, an explicit server/token/CA, or a kubeconfig). Kept small on
purpose: five verbs and typed errors.

For long runs on a real cluster: the bearer token is read from its file again whenever the file
changes (the kubelet rotates projected service-account tokens), and an answer the API server
means as "try again" (429 with its Retry-After, 500/502/503/504, a dropped connection) is retried
with a bounded backoff for reads, replaces and patches; a create is retried only on 429, which
the server sends before doing anything. Out of a pod, a kubeconfig gives the target (see
:mod:`.kubeconfig`): a token, a token file, a client certificate, or an exec credential plugin
run again when its token expires or the server answers 401.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from harmony_fleet.contracts.crd import API_VERSION
from harmony_fleet.errors import FleetError

from .kubeconfig import ExecPlugin, KubeconfigError, Resolved

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: answers that mean "not now": retried (429 also for creates: nothing was done)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
MAX_RETRY_AFTER_S = 30.0
GROUP_PATH = f"/apis/{API_VERSION}"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(FleetError, RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Conflict(KubeError):
    """409: the object exists already, or changed under us."""


@dataclass(frozen=True)
class KubeTarget:
    server: str
    token: str | None = None
    ca_file: Path | None = None
    insecure: bool = False
    #: read again whenever it changes (rotated service-account tokens); wins over ``token``
    token_file: Path | None = None
    #: a client certificate and its key (PEM files)
    cert_file: Path | None = None
    key_file: Path | None = None
    #: an exec credential plugin: wins over ``token_file`` and ``token``
    exec_plugin: ExecPlugin | None = None
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def in_cluster(cls) -> KubeTarget:
        import os

        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), \
            os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeconfigError("not in a pod (KUBERNETES_SERVICE_HOST/PORT unset) and no "
                                  "[kube] server or kubeconfig given")
        return cls(f"https://{host}:{port}", ca_file=SERVICE_ACCOUNT / "ca.crt",
                   token_file=SERVICE_ACCOUNT / "token")

    @classmethod
    def from_kubeconfig(cls, resolved: Resolved) -> KubeTarget:
        return cls(resolved.server, resolved.token, resolved.ca_file, resolved.insecure,
                   token_file=resolved.token_file, cert_file=resolved.cert_file,
                   key_file=resolved.key_file, exec_plugin=resolved.exec_plugin)

    def current_token(self, *, refresh: bool = False) -> str | None:
        """The token now: the exec plugin's (run again once expired, or on ``refresh``), or
        ``token_file`` re-read when its modification time or size changed, or ``token``."""
        return self.token_and_expiry(refresh=refresh)[0]

    def token_and_expiry(self, *, refresh: bool = False
                         ) -> tuple[str | None, datetime.datetime | None]:
        if self.exec_plugin is not None:
            return self.exec_plugin.token(refresh=refresh)
        return self._static_token(), None

    def _static_token(self) -> str | None:
        if self.token_file is None:
            return self.token
        stat = self.token_file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache.get("stamp") != stamp:
            self._cache["token"] = self.token_file.read_text(encoding="utf-8").strip()
            self._cache["stamp"] = stamp
        return str(self._cache["token"])


def device_path(name: str | None = None, *, status: bool = False) -> str:
    path = f"{GROUP_PATH}/devices" + (f"/{name}" if name else "")
    return path + ("/status" if status else "")


def deployment_status_path(namespace: str, name: str) -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/deployments/{name}/status"


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


class KubeClient:
    def __init__(self, target: KubeTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, ssl.SSLContext] = {}

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.target.insecure:
            return False
        if self.target.ca_file is None and self.target.cert_file is None:
            return True
        if "ssl" not in self._cache:
            context = ssl.create_default_context(
                cafile=str(self.target.ca_file) if self.target.ca_file else None)
            if self.target.cert_file is not None:
                context.load_cert_chain(str(self.target.cert_file),
                                        str(self.target.key_file or self.target.cert_file))
            self._cache["ssl"] = context
        return self._cache["ssl"]

    async def _request(self, method: str, path: str, body: Any = None,
                       content_type: str = "application/json", *,
                       retry: bool = True) -> dict[str, Any] | None:
        """One call, retried while the server says "not now" (see the module); ``retry=False``
        for callers with their own cadence (the Lease: a late renewal must fail, not wait)."""
        delays = list(RETRY_DELAYS_S) if retry else []
        refreshed = force = False
        while True:
            try:
                return await self._request_once(method, path, body, content_type,
                                                refresh=force)
            except KubeError as exc:
                # 401 with a plugin's token: the token was revoked or expired early; run the
                # plugin again, once (nothing was done: safe for every verb)
                if exc.status != 401 or self.target.exec_plugin is None or refreshed:
                    raise
                refreshed = force = True
                log.warning("%s %s: 401; running the exec credential plugin again", method, path)
            except _Retryable as exc:
                force = False
                if not delays or (method == "POST" and exc.status != 429):
                    raise exc.error from None
                delay = delays.pop(0) if exc.retry_after is None else exc.retry_after
                log.warning("%s %s: %s; retrying in %.1f s (%d left)", method, path, exc.error,
                            delay, len(delays))
                await asyncio.sleep(delay)

    async def _request_once(self, method: str, path: str, body: Any, content_type: str, *,
                            refresh: bool = False) -> dict[str, Any] | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json"}, timeout=aiohttp.ClientTimeout(total=30))
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        if self.target.exec_plugin is not None:  # may run a process: not on the event loop
            token = await asyncio.to_thread(self.target.current_token, refresh=refresh)
        else:
            token = self.target.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.request(
                method, self.target.server.rstrip("/") + path, data=data, ssl=self._ssl(),
                headers=headers,
            ) as response:
                text = await response.text()
                return self._answer(method, path, response, text)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise _Retryable(KubeError(0, f"{method} {path}: {exc or type(exc).__name__}"),
                             0, None) from exc

    @staticmethod
    def _answer(method: str, path: str, response: aiohttp.ClientResponse,
                text: str) -> dict[str, Any] | None:
        if response.status == 404 and method == "GET":
            return None
        if response.status >= 400:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            error = Conflict if response.status == 409 else KubeError
            failure = error(response.status, f"{method} {path}: {message}"[:500])
            if response.status in RETRY_STATUSES:
                raise _Retryable(failure, response.status, _retry_after(response))
            raise failure
        return json.loads(text) if text else {}

    async def get(self, path: str, *, retry: bool = True) -> dict[str, Any] | None:
        return await self._request("GET", path, retry=retry)

    async def list(self, path: str) -> list[dict[str, Any]]:
        doc = await self._request("GET", path)
        return list((doc or {}).get("items") or [])

    async def create(self, path: str, body: dict[str, Any], *,
                     retry: bool = True) -> dict[str, Any]:
        return await self._request("POST", path, body, retry=retry) or {}

    async def replace(self, path: str, body: dict[str, Any], *,
                      retry: bool = True) -> dict[str, Any]:
        return await self._request("PUT", path, body, retry=retry) or {}

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._request("PATCH", path, patch, MERGE_PATCH) or {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Retryable(FleetError):
    """An answer that means "try again"; carries the error to raise when no retry is left."""

    def __init__(self, error: KubeError, status: int, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error, self.status, self.retry_after = error, status, retry_after


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Retry-After in seconds (bounded), or None."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)
