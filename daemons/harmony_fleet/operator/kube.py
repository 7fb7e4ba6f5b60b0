"""A small Kubernetes REST client for the operator's own writes (Device CRs, status, Lease).

kopf drives the watches and handlers; the writes the operator makes outside handlers go
through this client: plain JSON over HTTPS with merge patches, the same credentials kopf uses
(in-cluster service account, or an explicit server/token/CA). Kept small on purpose: five
verbs and typed errors.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_PATH = "/apis/fleet.nationtech.io/v1alpha1"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(RuntimeError):
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

    @classmethod
    def in_cluster(cls) -> KubeTarget:
        import os

        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(f"https://{host}:{port}",
                   (SERVICE_ACCOUNT / "token").read_text(encoding="utf-8").strip(),
                   SERVICE_ACCOUNT / "ca.crt")


def device_path(name: str | None = None, *, status: bool = False) -> str:
    path = f"{GROUP_PATH}/devices" + (f"/{name}" if name else "")
    return path + ("/status" if status else "")


def deployment_status_path(namespace: str, name: str) -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/deployments/{name}/status"


def lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


class KubeClient:
    def __init__(self, target: KubeTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.target.insecure:
            return False
        if self.target.ca_file:
            return ssl.create_default_context(cafile=str(self.target.ca_file))
        return True

    async def _request(self, method: str, path: str, body: Any = None,
                       content_type: str = "application/json") -> dict[str, Any] | None:
        if self._session is None:
            headers = {"Accept": "application/json"}
            if self.target.token:
                headers["Authorization"] = f"Bearer {self.target.token}"
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=30))
        data = json.dumps(body) if body is not None else None
        async with self._session.request(
            method, self.target.server.rstrip("/") + path, data=data, ssl=self._ssl(),
            headers={"Content-Type": content_type} if data is not None else None,
        ) as response:
            text = await response.text()
            if response.status == 404 and method == "GET":
                return None
            if response.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                error = Conflict if response.status == 409 else KubeError
                raise error(response.status, f"{method} {path}: {message}"[:500])
            return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self._request("GET", path)

    async def list(self, path: str) -> list[dict[str, Any]]:
        doc = await self._request("GET", path)
        return list((doc or {}).get("items") or [])

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", path, body) or {}

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("PUT", path, body) or {}

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._request("PATCH", path, patch, MERGE_PATCH) or {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
