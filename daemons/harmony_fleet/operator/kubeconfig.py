"""Kubeconfig files and exec credential plugins for the operator's Kubernetes credentials.

The rules are kubectl's (client-go's): the files of ``KUBECONFIG`` (``:``-separated) or
``~/.kube/config``, merged with the first value winning; the context named by the setting or the
``current-context``; relative file names resolved against the file that names them. A user may
give a ``token``, a ``tokenFile``, a client certificate and key (files or ``-data``), or an
``exec`` plugin speaking ``client.authentication.k8s.io/v1`` (or ``v1beta1``): the plugin runs
when a token is first needed and again once its ``expirationTimestamp`` has passed (or after a
401), never on every request.

Not supported (a :class:`KubeconfigError` names them): ``auth-provider`` (removed from kubectl),
``username``/``password`` (basic auth), impersonation, and exec plugins that answer with a client
certificate instead of a token.

Why our own code rather than a client library: see docs/server-roles.md ("The operator's
Kubernetes client on a real cluster").
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harmony_fleet.errors import InvalidInput

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
#: a token this close to its expiry is renewed before use
EXPIRY_SKEW_S = 5.0
EXEC_TIMEOUT_S = 60.0


class KubeconfigError(InvalidInput):
    """A kubeconfig (or exec plugin) cannot be used: the message names the file, context or
    field and the rule, never a credential."""


@dataclass
class ExecPlugin:
    """An exec credential plugin (``users[].user.exec``): runs ``command`` for a token and keeps
    it until its expiry. Thread-safe (kopf's login runs in kopf's thread)."""

    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_version: str = EXEC_API_VERSIONS[0]
    cwd: Path | None = None
    _token: str | None = field(default=None, repr=False)
    _expires: datetime.datetime | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def token(self, *, refresh: bool = False) -> tuple[str, datetime.datetime | None]:
        """The token and its expiry (None: no expiry given), from the plugin when there is none
        yet, when it is (nearly) expired, or when ``refresh`` (the server answered 401)."""
        with self._lock:
            now = datetime.datetime.now(datetime.UTC)
            stale = self._expires is not None and \
                self._expires - datetime.timedelta(seconds=EXPIRY_SKEW_S) <= now
            if refresh or self._token is None or stale:
                self._token, self._expires = self._run()
            return self._token, self._expires

    def _run(self) -> tuple[str, datetime.datetime | None]:
        info = {"apiVersion": self.api_version, "kind": "ExecCredential",
                "spec": {"interactive": False}}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            done = subprocess.run(
                [self.command, *self.args], env=env, cwd=self.cwd, capture_output=True,
                stdin=subprocess.DEVNULL, timeout=EXEC_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KubeconfigError(f"exec plugin {self.command!r}: {type(exc).__name__}") from None
        if done.returncode != 0:
            # stderr is the plugin's own message (it is not the credential, which goes to stdout)
            raise KubeconfigError(f"exec plugin {self.command!r} exited {done.returncode}: "
                                  f"{done.stderr.decode(errors='replace').strip()[:300]}")
        return parse_exec_credential(done.stdout, self.command)


def parse_exec_credential(stdout: bytes, command: str) -> tuple[str, datetime.datetime | None]:
    """The token and expiry of an ExecCredential document (a plugin's output)."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        raise KubeconfigError(f"exec plugin {command!r}: output is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential" \
            or doc.get("apiVersion") not in EXEC_API_VERSIONS:
        raise KubeconfigError(f"exec plugin {command!r}: output is not an ExecCredential of "
                              f"{' or '.join(EXEC_API_VERSIONS)}")
    status = doc.get("status")
    if not isinstance(status, dict):
        status = {}
    token = status.get("token")
    if not isinstance(token, str) or not token:
        raise KubeconfigError(f"exec plugin {command!r}: status.token is missing (client "
                              f"certificates from exec plugins are not supported)")
    stamp = status.get("expirationTimestamp")
    if stamp is None:
        return token, None
    try:
        expires = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise KubeconfigError(f"exec plugin {command!r}: status.expirationTimestamp is not "
                              f"RFC 3339") from None
    if expires.tzinfo is None:
        raise KubeconfigError(f"exec plugin {command!r}: status.expirationTimestamp has no "
                              f"time zone")
    return token, expires


@dataclass(frozen=True)
class Resolved:
    """What a kubeconfig context gives (paths absolute; ``-data`` fields written to private
    files removed at exit)."""

    server: str
    ca_file: Path | None = None
    insecure: bool = False
    token: str | None = None
    token_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    exec_plugin: ExecPlugin | None = None
    namespace: str | None = None


def kubeconfig_paths(explicit: Path | None) -> list[Path]:
    """The files to read: ``explicit``, else ``KUBECONFIG``'s, else ``~/.kube/config``."""
    if explicit is not None:
        return [explicit]
    env = os.environ.get("KUBECONFIG", "")
    paths = [Path(part).expanduser() for part in env.split(os.pathsep) if part.strip()]
    if paths:
        return paths
    return [Path("~/.kube/config").expanduser()]


def load_kubeconfig(paths: list[Path], context: str | None = None) -> Resolved:
    """Resolve ``context`` (default: the ``current-context``) of the merged ``paths``."""
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {
        "contexts": {}, "clusters": {}, "users": {}}
    singular = {"contexts": "context", "clusters": "cluster", "users": "user"}
    read_any = False
    for path in paths:
        if not path.is_file():
            if len(paths) == 1:  # KUBECONFIG may list files that do not exist (kubectl too)
                raise KubeconfigError(f"kubeconfig {path}: no such file")
            continue
        read_any = True
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise KubeconfigError(f"kubeconfig {path}: unreadable ({type(exc).__name__})") \
                from None
        if not isinstance(doc, dict):
            raise KubeconfigError(f"kubeconfig {path}: not a mapping")
        if current is None and doc.get("current-context"):
            current = str(doc["current-context"])
        for kind, items in entries.items():
            listed = doc.get(kind) or []
            if not isinstance(listed, list):
                raise KubeconfigError(f"kubeconfig {path}: {kind} is not a list")
            for item in listed:
                body = item.get(singular[kind]) if isinstance(item, dict) else None
                if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                        or not isinstance(body, dict):
                    raise KubeconfigError(f"kubeconfig {path}: an entry of {kind} has no name "
                                          f"or no {singular[kind]} mapping")
                items.setdefault(item["name"], (body, path.parent))
    if not read_any:
        raise KubeconfigError(f"kubeconfig: none of {', '.join(map(str, paths))} exists")
    name = context or current
    if name is None:
        raise KubeconfigError("kubeconfig: no context given and no current-context set")
    ctx = _entry(entries, "contexts", name)[0]
    cluster, cluster_dir = _entry(entries, "clusters", ctx.get("cluster"))
    user, user_dir = (_entry(entries, "users", ctx["user"]) if ctx.get("user")
                      else ({}, cluster_dir))
    return _resolve(name, (cluster, cluster_dir), (user, user_dir), ctx.get("namespace"))


def _entry(entries: dict[str, dict[str, tuple[dict[str, Any], Path]]], kind: str,
           name: Any) -> tuple[dict[str, Any], Path]:
    if not isinstance(name, str) or name not in entries[kind]:
        raise KubeconfigError(f"kubeconfig: {kind[:-1]} {name!r} is not defined")
    return entries[kind][name]


def _resolve(context: str, cluster_at: tuple[dict[str, Any], Path],
             user_at: tuple[dict[str, Any], Path], namespace: Any) -> Resolved:
    (cluster, cluster_dir), (user, user_dir) = cluster_at, user_at
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeconfigError(f"kubeconfig context {context!r}: the cluster's server is not an "
                              f"http(s) URL")
    for unsupported in ("auth-provider", "username", "password", "as", "as-groups"):
        if user.get(unsupported):
            raise KubeconfigError(f"kubeconfig context {context!r}: user field {unsupported!r} "
                                  f"is not supported (use a token, a client certificate or an "
                                  f"exec plugin)")
    cert = _file(user, "client-certificate", user_dir, context)
    key = _file(user, "client-key", user_dir, context)
    if (cert is None) != (key is None):
        raise KubeconfigError(f"kubeconfig context {context!r}: a client certificate needs "
                              f"its key and the key its certificate")
    return Resolved(
        server=server, ca_file=_file(cluster, "certificate-authority", cluster_dir, context),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=str(user["token"]) if user.get("token") else None,
        token_file=_path(user.get("tokenFile"), user_dir),
        cert_file=cert, key_file=key,
        exec_plugin=_exec(user.get("exec"), user_dir, context),
        namespace=namespace if isinstance(namespace, str) else None,
    )


def _path(value: Any, base: Path) -> Path | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _file(section: dict[str, Any], key: str, base: Path, context: str) -> Path | None:
    """``key`` as a path, or ``key-data`` (base64) written to a private temporary file."""
    data = section.get(f"{key}-data")
    if not data:
        path = _path(section.get(key), base)
        if path is not None and not path.is_file():
            raise KubeconfigError(f"kubeconfig context {context!r}: {key} {path}: no such file")
        return path
    try:
        raw = base64.b64decode(str(data), validate=True)
    except ValueError:
        raise KubeconfigError(f"kubeconfig context {context!r}: {key}-data is not base64") \
            from None
    fd, name = tempfile.mkstemp(prefix="fleet-operator-", suffix=".pem")  # mode 0600
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    atexit.register(_remove, Path(name))  # a key must not outlive the process
    return Path(name)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _exec(spec: Any, base: Path, context: str) -> ExecPlugin | None:
    if not spec:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("command"), str):
        raise KubeconfigError(f"kubeconfig context {context!r}: exec needs a command")
    version = spec.get("apiVersion", EXEC_API_VERSIONS[0])
    if version not in EXEC_API_VERSIONS:
        raise KubeconfigError(f"kubeconfig context {context!r}: exec apiVersion {version!r} is "
                              f"not one of {', '.join(EXEC_API_VERSIONS)}")
    command = spec["command"]
    # as client-go: a command with a path separator is relative to the kubeconfig's directory
    if os.sep in command and not Path(command).is_absolute():
        command = str(base / command)
    env = {str(item["name"]): str(item["value"]) for item in spec.get("env") or []
           if isinstance(item, dict) and "name" in item and "value" in item}
    return ExecPlugin(command, [str(arg) for arg in spec.get("args") or []], env, version,
                      cwd=base)
