"""A Kubernetes API emulator for the operator's tests, over real HTTP on loopback.

:class:`FleetKubeEmulator` subclasses kmock's ``KubernetesEmulator`` (as kmock's docs invite) and
serves the registered resources itself, with the API server's semantics that kopf and our own
client rely on and that plain kmock lacks (measured against kopf and kubernetes.core):

* ``metadata.resourceVersion`` (one monotonic counter, as etcd's revision), ``uid``,
  ``creationTimestamp`` and ``generation`` stamped on create; every write that changes the object
  bumps the resourceVersion; ``generation`` grows when anything but ``metadata`` (and ``status``
  for resources with the status subresource) changes;
* errors as Kubernetes ``Status`` bodies with the real codes and reasons: 404 NotFound,
  409 AlreadyExists / Conflict, 422 Invalid, 400 BadRequest, 405, 415, 410 Expired;
* PATCH as RFC 7386 merge-patch (``application/merge-patch+json``) and RFC 6902 JSON-patch
  (``application/json-patch+json``, kopf uses its ``test`` op on the resourceVersion);
  strategic-merge-patch only for built-in groups (treated as a merge-patch), 415 for custom ones;
  PUT replaces (``metadata.resourceVersion`` in the body is an optimistic-concurrency check);
* the ``status`` subresource: writes to ``/status`` change only ``status``; writes to the main
  resource (and creates) leave ``status`` alone;
* finalizers: DELETE only sets ``metadata.deletionTimestamp`` while finalizers remain (watchers
  see MODIFIED); the write that empties them removes the object (watchers see DELETED);
* lists and watches with ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``,
  ``k in (a,b)``, ``k notin (a,b)``), ``fieldSelector`` (equality on dotted paths),
  ``limit``/``continue``; watches honour ``resourceVersion`` (replay from the event log, or
  410 Expired when compacted), ``timeoutSeconds``, ``sendInitialEvents`` (+ the initial-events-end
  BOOKMARK), and ``watch=true`` as well as kubernetes_asyncio's ``watch=True``;
* a log of every write request (:attr:`FleetKubeEmulator.write_log`) for rate assertions.

Usage (``serve_kube_emulator()`` is the synchronous twin, e.g. for session-scoped fixtures)::

    async with start_kube_emulator() as kube:       # kube.url == "http://127.0.0.1:PORT"
        kube.emulator.register_resource("example.com/v1/widgets", kind="Widget", namespaced=True)
        # kopf: a @kopf.on.login handler returns kube.kopf_connection_info(); then
        async with embedded_kopf(registry):         # kopf.operator(standalone, clusterwide) in a task
            ...
            await kube.emulator.wait_until(lambda: kube.emulator.get_object(DEPLOYMENTS, "web",
                                                                            namespace="ns1"))
        patches = kube.emulator.writes(method="PATCH", resource=DEPLOYMENTS, subresource="status")
        assert (min_interval(patches) or 1.0) >= 1.0   # at most one status patch per second

The HTTP server runs in its own thread and event loop (:class:`KubeEmulatorServer`): kopf cancels,
when it stops, every task created after it started, which would include an in-loop server's
connection tasks. The emulator's state is guarded by a lock, so tests may read and change it
(:meth:`FleetKubeEmulator.get_object`, :meth:`~FleetKubeEmulator.create_object`, ...) meanwhile.

User-defined kmock reactions (``emulator['patch', kmock.subresource('status')] << 503``) take
priority over the emulation, so faults can be injected; a request answered by such a reaction does
not change the stored state (unlike plain kmock, which applies writes even when intercepted).
Declare reactions and resources before the traffic starts: kmock's own structures are not locked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import functools
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec, TypeVar

import aiohttp.test_utils
import aiohttp.web
import attrs
import kmock
from kmock._internal.rendering import StreamingError  # kmock wraps errors raised mid-stream in it

if TYPE_CHECKING:
    import kopf

T = TypeVar("T")
P = ParamSpec("P")
E = TypeVar("E", bound="FleetKubeEmulator")

FLEET_GROUP: Final = "fleet.nationtech.io"
FLEET_VERSION: Final = "v1alpha1"
DEPLOYMENTS: Final = kmock.resource(FLEET_GROUP, FLEET_VERSION, "deployments")
DEVICES: Final = kmock.resource(FLEET_GROUP, FLEET_VERSION, "devices")
LEASES: Final = kmock.resource("coordination.k8s.io", "v1", "leases")
EVENTS: Final = kmock.resource("", "v1", "events")
NAMESPACES: Final = kmock.resource("", "v1", "namespaces")
SECRETS: Final = kmock.resource("", "v1", "secrets")
KOPF_CLUSTER_PEERINGS: Final = kmock.resource("kopf.dev", "v1", "clusterkopfpeerings")
KOPF_PEERINGS: Final = kmock.resource("kopf.dev", "v1", "kopfpeerings")

DEFAULT_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
APPLY_PATCH: Final = "application/apply-patch+yaml"

CRDS: Final = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
#: The built-in kinds the collection's roles apply (``register_platform_resources()``), as
#: ``(group/version/plural, kind, namespaced, subresources)``.
PLATFORM_RESOURCES: Final = (
    ("v1/configmaps", "ConfigMap", True, ()),
    ("v1/services", "Service", True, ("status",)),
    ("v1/serviceaccounts", "ServiceAccount", True, ()),
    ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True, ("status",)),
    ("apps/v1/deployments", "Deployment", True, ("status",)),
    ("apps/v1/statefulsets", "StatefulSet", True, ("status",)),
    ("batch/v1/jobs", "Job", True, ("status",)),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True, ("status",)),
    ("rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", False, ()),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", "ClusterRoleBinding", False, ()),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True, ()),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True, ()),
)
_BUILTIN_GROUPS: Final = frozenset({"", "apps", "batch", "policy", "autoscaling"})
#: Set while a ``dryRun=All`` request is served: the emulator computes the answer, stores nothing,
#: bumps no resourceVersion and tells no watcher (a context variable: one request, one task).
_DRY_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("kube_emulator_dry_run", default=False)

ResourceRef = str | kmock.resource
"""A resource as ``kmock.resource`` or a string kmock parses: ``"group/version/plural"``,
``"v1/namespaces"``, ``"plural.version.group"``, or a bare plural if exactly one is registered."""

_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_TRUE_WORDS: Final = frozenset({"1", "t", "T", "true", "True", "TRUE"})  # Go's strconv.ParseBool
_FALSE_WORDS: Final = frozenset({"0", "f", "F", "false", "False", "FALSE"})
_SERVER_MANAGED_META: Final = (
    "uid", "resourceVersion", "creationTimestamp", "generation",
    "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields",
)
_REASONS: Final = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
}


# --------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """An API answer other than success, rendered as a Kubernetes ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.status(), status=self.code)


class _ServeNatively(Exception):
    """Raised by the fallback reaction: no user reaction took the request; the emulator serves it."""


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# --------------------------------------------------------------------------------------------
# Paths, selectors, patches (pure helpers, usable on their own)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiPath:
    """A parsed API path; ``plural`` is None for discovery paths (``/apis/<group>[/<version>]``)."""

    group: str
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


_NAMESPACE_SUBRESOURCES: Final = frozenset({"status", "finalize"})


def parse_api_path(path: str) -> ApiPath | None:
    """Parse ``/api/v1/...`` and ``/apis/<group>/<version>/...``; None for other paths.

    Unlike kmock's parser, ``/api/v1/namespaces`` and ``/api/v1/namespaces/<name>[/status]``
    address Namespace objects, while ``/api/v1/namespaces/<ns>/<plural>...`` is a namespace prefix.
    """
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) == 2:
        return ApiPath(group=parts[1])
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if any(not part for part in [version, *rest]):
        return None
    namespace: str | None = None
    namespace_object = group == "" and rest[:1] == ["namespaces"] and (
        len(rest) <= 2 or (len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES))
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and not namespace_object:
        namespace, rest = rest[1], rest[2:]
    return ApiPath(
        group=group, version=version, namespace=namespace,
        plural=rest[0] if rest else None,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def parse_bool(value: str | None) -> bool | None:
    """Go's ``strconv.ParseBool`` as the API server uses it for query flags; None if absent/unknown."""
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, Any]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case _:
                return not present


_SET_TERM: Final = re.compile(r"([^\s=!(),]+)\s+(in|notin)\s+\(([^()]*)\)")
_EQ_TERM: Final = re.compile(r"([^\s=!(),]+)\s*(==|=|!=)\s*([^\s=!(),]*)")
_KEY_TERM: Final = re.compile(r"(!?)\s*([^\s=!(),]+)")


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


def parse_label_selector(selector: str) -> list[LabelRequirement]:
    """Parse a label selector (equality- and set-based); ValueError if malformed."""
    requirements = []
    for term in _split_terms(selector):
        if m := _SET_TERM.fullmatch(term):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append(LabelRequirement(m.group(1), m.group(2), values))
        elif m := _EQ_TERM.fullmatch(term):
            op = "!=" if m.group(2) == "!=" else "="
            requirements.append(LabelRequirement(m.group(1), op, frozenset({m.group(3)})))
        elif m := _KEY_TERM.fullmatch(term):
            requirements.append(LabelRequirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return requirements


@dataclasses.dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negated: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in self.path:
            current = current.get(part) if isinstance(current, Mapping) else None
        text = "" if current is None else current if isinstance(current, str) else json.dumps(current)
        return (text == self.value) != self.negated


def parse_field_selector(selector: str) -> list[FieldRequirement]:
    """Parse ``a.b=v``, ``a.b==v``, ``a.b!=v`` terms; ValueError if malformed."""
    requirements = []
    for term in _split_terms(selector):
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        requirements.append(FieldRequirement(tuple(m.group(1).split(".")), m.group(3).strip(),
                                             m.group(2) == "!="))
    return requirements


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: objects merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JsonPatchError(ValueError):
    """The JSON-patch cannot be applied (a failed ``test``, a missing path, a bad operation)."""


def _pointer(text: Any) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise JsonPatchError(f"invalid JSON pointer: {text!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in text.split("/")[1:]]


def _index(container: list[Any], part: str, *, allow_end: bool) -> int:
    if allow_end and part == "-":
        return len(container)
    if not re.fullmatch(r"0|[1-9][0-9]*", part):
        raise JsonPatchError(f"invalid array index: {part!r}")
    index = int(part)
    if index > len(container) or (index == len(container) and not allow_end):
        raise JsonPatchError(f"array index out of range: {index}")
    return index


def _resolve(doc: Any, tokens: Sequence[str]) -> Any:
    current = doc
    for token in tokens:
        if isinstance(current, dict):
            if token not in current:
                raise JsonPatchError(f"path not found: /{'/'.join(tokens)}")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, allow_end=False)]
        else:
            raise JsonPatchError(f"path not found: /{'/'.join(tokens)}")
    return current


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _add(doc: Any, tokens: Sequence[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], allow_end=True), value)
    else:
        raise JsonPatchError(f"cannot add to a scalar at /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: Sequence[str]) -> Any:
    if not tokens:
        raise JsonPatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, dict) and tokens[-1] in parent:
        return parent.pop(tokens[-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, tokens[-1], allow_end=False))
    raise JsonPatchError(f"path not found: /{'/'.join(tokens)}")


def _replace(doc: Any, tokens: Sequence[str], value: Any) -> Any:
    _resolve(doc, tokens)  # the target must exist
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, list):
        parent[_index(parent, tokens[-1], allow_end=False)] = value
    else:
        parent[tokens[-1]] = value
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON-patch on a copy of ``doc``; JsonPatchError on any failure."""
    if not isinstance(operations, list):
        raise JsonPatchError("a JSON-patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict) or "path" not in operation:
            raise JsonPatchError(f"invalid operation: {operation!r}")
        op, tokens = operation.get("op"), _pointer(operation["path"])
        if op in ("add", "replace", "test") and "value" not in operation:
            raise JsonPatchError(f"missing value in {operation!r}")
        match op:
            case "add":
                doc = _add(doc, tokens, copy.deepcopy(operation["value"]))
            case "remove":
                _remove(doc, tokens)
            case "replace":
                doc = _replace(doc, tokens, copy.deepcopy(operation["value"]))
            case "move" | "copy":
                source = _pointer(operation.get("from"))
                if op == "move" and tokens[:len(source)] == source and tokens != source:
                    raise JsonPatchError("cannot move a value into its own child")
                value = _remove(doc, source) if op == "move" else copy.deepcopy(_resolve(doc, source))
                doc = _add(doc, tokens, value)
            case "test":
                if not _json_equal(_resolve(doc, tokens), operation["value"]):
                    raise JsonPatchError(f"test failed at {operation['path']}")
            case _:
                raise JsonPatchError(f"unknown operation: {op!r}")
    return doc


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# The request log


@dataclasses.dataclass(slots=True)
class WriteRecord:
    """One POST/PUT/PATCH/DELETE request, in arrival order; ``status`` is set once answered."""

    method: str
    path: str
    params: dict[str, str]
    content_type: str
    data: Any  # the parsed JSON body, if any
    timestamp: float  # time.monotonic() at arrival
    wall_time: float  # time.time() at arrival
    resource: kmock.resource | None
    namespace: str | None
    name: str | None  # from the URL, or the body's metadata.name for creates
    subresource: str | None
    status: int | None = None


def min_interval(records: Sequence[WriteRecord]) -> float | None:
    """The smallest gap (seconds) between consecutive records, None for fewer than two."""
    stamps = sorted(record.timestamp for record in records)
    return min((b - a for a, b in itertools.pairwise(stamps)), default=None)


def max_per_window(records: Sequence[WriteRecord], window: float) -> int:
    """The largest number of records that arrived within any ``window`` seconds."""
    stamps = sorted(record.timestamp for record in records)
    best = 0
    for i, start in enumerate(stamps):
        best = max(best, bisect.bisect_left(stamps, start + window, lo=i) - i)
    return best


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change as the emulator's watchers see it (``obj`` is the new/last state)."""

    resource_version: int
    resource: kmock.resource
    namespace: str | None
    name: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Served:
    """A registered resource as the serving code needs it."""

    resource: kmock.resource
    info: kmock.ResourceInfo

    @property
    def namespaced(self) -> bool:
        return self.info.namespaced is not False

    @property
    def kind(self) -> str:
        return self.info.kind or str(self.resource.plural).capitalize()

    @property
    def api_version(self) -> str:
        group, version = self.resource.group, self.resource.version
        return f"{group}/{version}" if group else str(version)

    @property
    def display(self) -> str:  # as in the API server's messages: "deployments.fleet.nationtech.io"
        group, plural = self.resource.group, self.resource.plural
        return f"{plural}.{group}" if group else str(plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.info.subresources

    @property
    def builtin(self) -> bool:
        group = self.resource.group or ""
        return group in _BUILTIN_GROUPS or group.endswith(".k8s.io")

    def not_found(self, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{self.display} "{name}" not found', {
            "name": name, "group": self.resource.group, "kind": self.resource.plural})

    def conflict(self, name: str, why: str) -> ApiError:
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {self.display} "{name}": {why}',
                        {"name": name, "group": self.resource.group, "kind": self.resource.plural})

    def invalid(self, name: str, *causes: tuple[str, str]) -> ApiError:
        text = "; ".join(f"{field}: {message}" for field, message in causes)
        qualified = f'{self.kind}.{self.resource.group or "core"}'
        return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', {
            "name": name, "group": self.resource.group, "kind": self.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        })


def _with_status(body: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` whose ``status`` is taken from ``source`` (or absent if it has none)."""
    result = copy.deepcopy(dict(body))
    result.pop("status", None)
    if "status" in source:
        result["status"] = copy.deepcopy(source["status"])
    return result


def _map_problem(values: Any, *, labels: bool) -> str | None:
    """Why labels/annotations are invalid (keys: qualified names; label values: 63 chars), or None."""
    if values is None:
        return None
    if not isinstance(values, dict):
        return "must be a map of strings"
    for key, value in values.items():
        prefix, _, short = str(key).rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))) or \
                len(short) > 63 or not _QUALIFIED_NAME.fullmatch(short):
            return f'Invalid value: "{key}": name part must consist of alphanumerics, "-", "_" or "."'
        if not isinstance(value, str):
            return f"Invalid value: {key}: must be a string"
        if labels and value and (len(value) > 63 or not _QUALIFIED_NAME.fullmatch(value)):
            return f'Invalid value: "{value}": at most 63 alphanumerics, "-", "_" or "." in a label'
    return None


def _locked(method: Callable[Concatenate[E, P], T]) -> Callable[Concatenate[E, P], T]:
    """Run an emulator's state operation under its state lock (HTTP and tests use two threads)."""

    @functools.wraps(method)
    def locked(self: E, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._state_lock:
            return method(self, *args, **kwargs)

    return locked


_Key = tuple[kmock.resource, str | None, str]
_Matcher = Callable[[Mapping[str, Any]], bool]


def _strip_for_generation(body: Mapping[str, Any], *, has_status: bool) -> dict[str, Any]:
    return {k: v for k, v in body.items()
            if k not in ("metadata", "apiVersion", "kind") and not (has_status and k == "status")}


# --------------------------------------------------------------------------------------------
# The emulator


@attrs.define(kw_only=True)
class FleetKubeEmulator(kmock.KubernetesEmulator):
    """kmock's ``KubernetesEmulator`` with the API server's semantics for the registered resources.

    Serve it with :func:`start_kube_emulator`. Registered by default: the fleet CRDs
    (``deployments``, ``devices``), ``coordination.k8s.io/v1`` ``leases``, the core ``events`` and
    ``namespaces`` that kopf needs (its namespace observer and event poster wait for them in the
    discovery even cluster-wide), and the core ``secrets`` Deployments take values from.
    More with :meth:`register_resource` / :meth:`register_crd`.

    Objects live in kmock's ``objects`` array (with their history of versions); read them with
    :meth:`get_object` / :meth:`list_objects`, change them with :meth:`create_object`,
    :meth:`patch_object`, :meth:`delete_object` (same semantics and watch events as over HTTP,
    but not in the write log). Writes assigned directly into ``objects[...]`` bypass stamping and
    watchers.
    """

    register_defaults: bool = True
    initial_namespaces: tuple[str, ...] = ("default",)
    auto_create_namespaces: bool = True  # else a create in a missing namespace answers 404
    establish_crds: bool = True  # a stored CRD is served and gets Established=True at once
    bump_on_noop: bool = False  # the API server keeps the resourceVersion when nothing changed
    watch_history_limit: int = 10_000  # events kept for resourceVersion-based watch resumption
    #: requests kept for kmock's request views (None: all, as tests inspect them). kmock's
    #: dispatcher scans the kept requests on every request, so a run of tens of thousands of
    #: requests (a fleet-scale benchmark) keeps only the latest few hundred.
    request_history_limit: int | None = None

    write_log: list[WriteRecord] = attrs.field(factory=list, init=False)
    dry_run_log: list[WriteRecord] = attrs.field(factory=list, init=False)  # dryRun=All writes
    _rv: int = attrs.field(default=0, init=False)
    _events: list[WatchEvent] = attrs.field(factory=list, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    # The HTTP side runs in the server thread's loop, the Python API in the tests' loop: every
    # state operation is synchronous and holds this lock; waiters in any loop get woken up.
    _state_lock: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = attrs.field(factory=set, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _active_watches: int = attrs.field(default=0, init=False)
    _request_count: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Below user reactions (priority 0) and above kmock's own fallbacks (-inf, 0): a resource
        # request nobody intercepted is served natively by _handle().
        (self.fallback ** 1)[self._is_resource_request] << self._serve_natively
        if self.register_defaults:
            self.register_resource(NAMESPACES, kind="Namespace", namespaced=False, subresources=["status"],
                                   shortnames=["ns"])
            self.register_resource(EVENTS, kind="Event", namespaced=True, shortnames=["ev"])
            self.register_resource(LEASES, kind="Lease", namespaced=True)
            self.register_resource(SECRETS, kind="Secret", namespaced=True)
            self.register_resource(DEPLOYMENTS, kind="Deployment", namespaced=True, subresources=["status"],
                                   shortnames=["fleetdep"], categories=["fleet"])
            self.register_resource(DEVICES, kind="Device", namespaced=False, subresources=["status"],
                                   shortnames=["fleetdev"], categories=["fleet"])
        if (NAMESPACES in self.resources) and self.initial_namespaces:
            for namespace in self.initial_namespaces:
                self.ensure_namespace(namespace)

    # ---------------------------------------------------------------- registration

    @_locked
    def register_resource(
        self,
        resource: ResourceRef,
        *,
        kind: str,
        namespaced: bool,
        subresources: Iterable[str] = (),
        verbs: Iterable[str] = DEFAULT_VERBS,
        singular: str | None = None,
        shortnames: Iterable[str] = (),
        categories: Iterable[str] = (),
    ) -> kmock.resource:
        """Serve (and advertise in the discovery) a resource: ``"group/version/plural"``."""
        res = kmock.resource(resource)
        if res.group is None or not res.version or not res.plural:
            raise ValueError(f"a resource needs a group (or '' for core), version and plural: {resource!r}")
        self.resources[res] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, singular=singular or kind.lower(), verbs=set(verbs),
            subresources=set(subresources), shortnames=set(shortnames), categories=set(categories))
        return res

    def register_crd(self, crd: Mapping[str, Any]) -> list[kmock.resource]:
        """Register every served version of a CustomResourceDefinition manifest (a parsed dict)."""
        spec = crd["spec"]
        names = spec["names"]
        registered = []
        for version in spec.get("versions") or []:
            if version.get("served", True):
                registered.append(self.register_resource(
                    kmock.resource(spec["group"], version["name"], names["plural"]),
                    kind=names["kind"], namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    subresources=list((version.get("subresources") or {}).keys()),
                    singular=names.get("singular"), shortnames=names.get("shortNames") or (),
                    categories=names.get("categories") or ()))
        return registered

    def register_crd_file(self, path: str | Path) -> list[kmock.resource]:
        """Register the CRDs of a YAML file (several documents allowed)."""
        import yaml

        registered = []
        for doc in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                registered.extend(self.register_crd(doc))
        return registered

    def register_platform_resources(self) -> None:
        """Serve the built-in kinds a deployment to a cluster applies (``PLATFORM_RESOURCES``) and
        ``CustomResourceDefinition`` itself: a CRD written over the API is registered (its kinds
        appear in the discovery) and, with ``establish_crds``, gets the ``NamesAccepted`` and
        ``Established`` conditions, as the API server sets them once the names are free."""
        for resource, kind, namespaced, subresources in PLATFORM_RESOURCES:
            self.register_resource(resource, kind=kind, namespaced=namespaced, subresources=subresources)
        self.register_resource(CRDS, kind="CustomResourceDefinition", namespaced=False,
                               subresources=["status"], shortnames=["crd", "crds"],
                               categories=["api-extensions"])

    def _crd_stored(self, body: dict[str, Any]) -> None:
        """A CRD was created or changed: serve its kinds, and establish it if so configured."""
        self.register_crd(body)

    def _crd_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._crd_status_for(body) if self.establish_crds else {}

    def _crd_status_for(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The status the API server gives a CRD whose names it accepted (Established)."""
        names = dict((body.get("spec") or {}).get("names") or {})
        now = _now()
        return {"acceptedNames": names, "storedVersions": [
            v["name"] for v in (body.get("spec") or {}).get("versions") or [] if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ]}

    def register_kopf_peering(self) -> None:
        """Serve kopf's peering resources, for operators run without ``standalone=True``."""
        self.register_resource(KOPF_CLUSTER_PEERINGS, kind="ClusterKopfPeering", namespaced=False)
        self.register_resource(KOPF_PEERINGS, kind="KopfPeering", namespaced=True)

    @_locked
    def _served(self, resource: ResourceRef) -> _Served:
        wanted = kmock.resource(resource)
        if wanted.group is not None and wanted.version is not None and wanted in self.resources:
            return _Served(wanted, self.resources[wanted])
        candidates = [res for res in self.resources if wanted.check(res)]
        if len(candidates) != 1:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
        return _Served(candidates[0], self.resources[candidates[0]])

    # ---------------------------------------------------------------- state & events

    @property
    def resource_version(self) -> int:
        """The current (latest) resourceVersion of the whole emulated cluster."""
        return self._rv

    @property
    def active_watches(self) -> int:
        """How many watch streams are open right now."""
        return self._active_watches

    @property
    def watch_events(self) -> list[WatchEvent]:
        """The retained change events, oldest first (a copy)."""
        return list(self._events)

    def _key(self, served: _Served, namespace: str | None, name: str) -> _Key:
        return (served.resource, namespace if served.namespaced else None, name)

    @_locked
    def _live(self, key: _Key) -> dict[str, Any] | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    @_locked
    def _store(self, key: _Key, body: dict[str, Any] | None) -> None:
        if _DRY_RUN.get():
            return
        if body is None:
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].create(copy.deepcopy(body))
        else:
            self.objects[key] = copy.deepcopy(body)

    @_locked
    def _next_rv(self) -> int:
        if _DRY_RUN.get():
            return self._rv + 1
        self._rv += 1
        return self._rv

    def _emit(self, served: _Served, event_type: str, obj: dict[str, Any],
              old: dict[str, Any] | None) -> None:
        if _DRY_RUN.get():
            return
        if served.resource == CRDS and event_type != "DELETED":
            self._crd_stored(obj)
        meta = obj["metadata"]
        self._events.append(WatchEvent(
            resource_version=int(meta["resourceVersion"]), resource=served.resource,
            namespace=meta.get("namespace"), name=meta["name"], type=event_type,
            obj=copy.deepcopy(obj), old=copy.deepcopy(old)))
        if len(self._events) > self.watch_history_limit:
            drop = len(self._events) // 2
            self._compacted_rv = self._events[drop - 1].resource_version
            del self._events[:drop]
        self._wake()

    def _wake(self) -> None:
        with self._state_lock:
            waiters = list(self._waiters)
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, event in waiters:
            if loop is current:
                event.set()
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits anymore
                    loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def _subscription(self) -> Iterator[asyncio.Event]:
        """An event of the running loop, set after every change; clear it before reading the state."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._state_lock:
            self._waiters.add(entry)
        try:
            yield entry[1]
        finally:
            with self._state_lock:
                self._waiters.discard(entry)

    def close_watches(self) -> None:
        """End every open watch stream (done by :func:`start_kube_emulator` before the server stops)."""
        with self._state_lock:
            self._closing = True
        self._wake()

    async def wait_until(self, condition: Callable[[], T | None], timeout: float = 10.0, *,
                         poll: float = 0.1) -> T:
        """Re-check ``condition()`` after every change (and every ``poll`` seconds, for conditions
        on other state) until it returns something truthy; return that value.

        Raises TimeoutError if that does not happen within ``timeout`` seconds.
        """
        with self._subscription() as changed:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    with self._state_lock:
                        value = condition()
                    if value:
                        return value
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), poll)

    # ---------------------------------------------------------------- validation

    def _validate_meta(self, served: _Served, name: str, body: Mapping[str, Any]) -> None:
        """The API server's validation of names, labels, annotations and finalizers (422 Invalid)."""
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            raise served.invalid(name, ("metadata", "must be an object"))
        label = served.resource == NAMESPACES
        pattern, limit = (_DNS_LABEL, 63) if label else (_DNS_SUBDOMAIN, 253)
        if len(name) > limit or not pattern.fullmatch(name):
            raise served.invalid(name, ("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                                        f"{'label' if label else 'subdomain'} must consist of lower case "
                                        "alphanumeric characters, '-' or '.'"))
        for field in ("labels", "annotations"):
            problem = _map_problem(meta.get(field), labels=field == "labels")
            if problem:
                raise served.invalid(name, (f"metadata.{field}", problem))
        finalizers = meta.get("finalizers")
        if finalizers is not None and (not isinstance(finalizers, list)
                                       or not all(isinstance(f, str) and f for f in finalizers)):
            raise served.invalid(name, ("metadata.finalizers", "must be a list of non-empty strings"))

    # ---------------------------------------------------------------- operations (sync, atomic)

    @_locked
    def ensure_namespace(self, name: str) -> dict[str, Any]:
        """Create the Namespace object if missing; return it."""
        served = self._served(NAMESPACES)
        existing = self._live(self._key(served, None, name))
        if existing is not None:
            return existing
        return self._create(served, None, {"metadata": {"name": name}})

    @_locked
    def _create(self, served: _Served, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request must be a JSON object")
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be a JSON object")
        for field, expected in (("apiVersion", served.api_version), ("kind", served.kind)):
            if body.get(field) not in (None, "", expected):
                raise _bad_request(f"the {field} of the object ({body[field]}) does not match "
                                   f"the resource ({expected})")
            body[field] = expected
        namespace = self._creation_namespace(served, namespace, meta)
        name = meta["name"] = meta.get("name") or self._generate_name(served, namespace, meta)
        self._validate_meta(served, name, body)
        key = self._key(served, namespace, name)
        if self._live(key) is not None:
            raise ApiError(409, "AlreadyExists", f'{served.display} "{name}" already exists', {
                "name": name, "group": served.resource.group, "kind": served.resource.plural})
        for field in _SERVER_MANAGED_META:
            meta.pop(field, None)
        if served.has_status:
            body.pop("status", None)  # "PUT/POST/PATCH requests to the custom resource ignore [status]"
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self._next_rv()),
                    creationTimestamp=_now(), generation=1)
        if served.resource == NAMESPACES:
            body["status"] = {"phase": "Active"}
        elif served.resource == CRDS:
            body["status"] = self._crd_status(body)
        head = {field: body.pop(field) for field in ("apiVersion", "kind", "metadata")}
        body = {**head, **body}
        self._store(key, body)
        self._emit(served, "ADDED", body, None)
        return copy.deepcopy(body)

    def _creation_namespace(self, served: _Served, namespace: str | None, meta: dict[str, Any]) -> str | None:
        if not served.namespaced:
            meta.pop("namespace", None)
            return None
        body_namespace = meta.get("namespace") or None
        if namespace is not None and body_namespace not in (None, namespace):
            raise _bad_request("the namespace of the provided object does not match the namespace "
                               "sent on the request")
        namespace = namespace or body_namespace
        if namespace is None:
            raise _bad_request("a namespaced object needs a namespace")
        meta["namespace"] = namespace
        self._require_namespace(namespace)
        return namespace

    def _generate_name(self, served: _Served, namespace: str | None, meta: Mapping[str, Any]) -> str:
        prefix = meta.get("generateName")
        if not prefix or not isinstance(prefix, str):
            raise served.invalid("", ("metadata.name", "Required value: name or generateName is required"))
        while True:
            name = prefix + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            if self._live(self._key(served, namespace, name)) is None:
                return name

    @_locked
    def _require_namespace(self, namespace: str) -> None:
        if NAMESPACES not in self.resources:
            return
        served = self._served(NAMESPACES)
        if self._live(self._key(served, None, namespace)) is not None:
            return
        if not self.auto_create_namespaces:
            raise served.not_found(namespace)
        self.ensure_namespace(namespace)

    @_locked
    def _write(self, served: _Served, namespace: str | None, name: str, subresource: str | None,
               change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Apply ``change(current) -> new body`` with the API server's rules; return the result."""
        key = self._key(served, namespace, name)
        current = self._live(key)
        if current is None:
            raise served.not_found(name)
        candidate = change(copy.deepcopy(current))
        if not isinstance(candidate, dict):
            raise _bad_request("the patched or replaced object must be a JSON object")
        if not isinstance(candidate.get("metadata"), dict):
            candidate["metadata"] = {}
        asked_rv = candidate["metadata"].get("resourceVersion")
        if asked_rv not in (None, "") and str(asked_rv) != current["metadata"]["resourceVersion"]:
            raise served.conflict(name, "the object has been modified; please apply your changes to the "
                                        "latest version and try again")
        if subresource == "status":
            result = _with_status(current, candidate)
        else:
            result = _with_status(candidate, current) if served.has_status else candidate
            self._keep_server_fields(served, name, current, result)
        result["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if result == current and not self.bump_on_noop:
            return current
        if _strip_for_generation(result, has_status=served.has_status) != \
                _strip_for_generation(current, has_status=served.has_status):
            result["metadata"]["generation"] = int(current["metadata"].get("generation") or 0) + 1
        result["metadata"]["resourceVersion"] = str(self._next_rv())
        self._store(key, result)
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self._store(key, None)  # the last finalizer is gone: the deletion completes
            self._emit(served, "DELETED", result, current)
        else:
            self._emit(served, "MODIFIED", result, current)
        return copy.deepcopy(result)

    def _keep_server_fields(self, served: _Served, name: str, current: Mapping[str, Any],
                            result: dict[str, Any]) -> None:
        """Restore what clients cannot change on the main resource; refuse new finalizers when deleting."""
        result["apiVersion"], result["kind"] = served.api_version, served.kind
        cur_meta, result_meta = current["metadata"], result["metadata"]
        for field in ("name", "namespace", *_SERVER_MANAGED_META):
            if field in cur_meta:
                result_meta[field] = cur_meta[field]
            else:
                result_meta.pop(field, None)
        self._validate_meta(served, name, result)
        if cur_meta.get("deletionTimestamp"):
            added = set(result_meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if added:
                raise served.invalid(name, ("metadata.finalizers", "Forbidden: no new finalizers can be "
                                            "added if the object is being deleted, found new finalizers "
                                            f"{sorted(added)}"))

    def _patch(self, served: _Served, namespace: str | None, name: str, subresource: str | None, *,
               patch: Any, content_type: str) -> dict[str, Any]:
        def change(current: dict[str, Any]) -> Any:
            if content_type == JSON_PATCH:
                if not isinstance(patch, list):  # the API server fails to decode it: 400, not 422
                    raise _bad_request("a JSON-patch must be a list of operations")
                try:
                    return json_patch(current, patch)
                except JsonPatchError as exc:
                    raise ApiError(422, "Invalid", str(exc)) from exc
            if not isinstance(patch, dict):
                raise _bad_request("a merge-patch must be a JSON object")
            return merge_patch(current, patch)

        if content_type not in (MERGE_PATCH, JSON_PATCH, STRATEGIC_MERGE_PATCH):
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: {JSON_PATCH}, {MERGE_PATCH}"
                           + (f", {STRATEGIC_MERGE_PATCH}" if served.builtin else ""))
        if content_type == STRATEGIC_MERGE_PATCH and not served.builtin:
            raise ApiError(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom "
                           f"resources; accepted media types include: {JSON_PATCH}, {MERGE_PATCH}")
        return self._write(served, namespace, name, subresource, change)

    def _replace(self, served: _Served, namespace: str | None, name: str, subresource: str | None,
                 body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request must be a JSON object")
        raw_meta = body.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        if meta.get("name") not in (None, name):
            raise _bad_request(f"the name of the object ({meta.get('name')}) does not match the name on "
                               f"the URL ({name})")
        if served.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise _bad_request("the namespace of the provided object does not match the namespace sent on "
                               "the request")
        return self._write(served, namespace, name, subresource, lambda _current: copy.deepcopy(body))

    @_locked
    def _delete(self, served: _Served, namespace: str | None, name: str,
                options: Any) -> tuple[dict[str, Any], bool]:
        """Delete or mark for deletion; return (the object or a Status body, whether it is gone)."""
        key = self._key(served, namespace, name)
        current = self._live(key)
        if current is None:
            raise served.not_found(name)
        meta = current["metadata"]
        preconditions = options.get("preconditions") if isinstance(options, dict) else None
        if isinstance(preconditions, dict):
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) not in (None, meta.get(field)):
                    raise served.conflict(name, f"Precondition failed: {field} in precondition: "
                                                f"{preconditions[field]}, {field} in object meta: "
                                                f"{meta.get(field)}")
        if meta.get("deletionTimestamp"):
            return current, False
        if meta.get("finalizers"):
            result = copy.deepcopy(current)
            result["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                                      resourceVersion=str(self._next_rv()))
            self._store(key, result)
            self._emit(served, "MODIFIED", result, current)
            return copy.deepcopy(result), False
        final = copy.deepcopy(current)
        final["metadata"]["resourceVersion"] = str(self._next_rv())
        self._store(key, None)
        self._emit(served, "DELETED", final, current)
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": served.resource.group, "kind": served.resource.plural,
                        "uid": meta.get("uid")},
        }, True

    def _select(self, served: _Served, namespace: str | None, name: str | None,
                label_selector: str | None, field_selector: str | None) -> _Matcher:
        try:
            labels = parse_label_selector(label_selector or "")
        except ValueError as exc:
            raise _bad_request(f"unable to parse requirement: {exc}") from exc
        try:
            fields = parse_field_selector(field_selector or "")
        except ValueError as exc:
            raise _bad_request(str(exc)) from exc

        def matches(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return ((namespace is None or not served.namespaced or meta.get("namespace") == namespace)
                    and (name is None or meta.get("name") == name)
                    and all(req.matches(meta.get("labels") or {}) for req in labels)
                    and all(req.matches(obj) for req in fields))

        return matches

    @_locked
    def _delete_collection(self, served: _Served, namespace: str | None,
                           params: Mapping[str, str]) -> dict[str, Any]:
        matches = self._select(served, namespace, None, params.get("labelSelector"),
                               params.get("fieldSelector"))
        items = []
        for obj in self._objects_of(served, matches):
            meta = obj["metadata"]
            result, gone = self._delete(served, meta.get("namespace"), meta["name"], None)
            items.append(obj if gone else result)
        return {"kind": f"{served.kind}List", "apiVersion": served.api_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    @_locked
    def _objects_of(self, served: _Served, matches: _Matcher) -> list[dict[str, Any]]:
        found = []
        for (resource, namespace, name), obj in self.objects.items():
            if resource == served.resource and not obj.deleted:
                body = obj.raw
                if matches(body):
                    found.append(((namespace or "", name), copy.deepcopy(body)))
        return [body for _, body in sorted(found, key=lambda pair: pair[0])]

    # ---------------------------------------------------------------- the Python API

    def get_object(self, resource: ResourceRef, name: str, *,
                   namespace: str | None = None) -> dict[str, Any] | None:
        """The current object (a copy), or None."""
        served = self._served(resource)
        return self._live(self._key(served, namespace, name))

    def list_objects(self, resource: ResourceRef, *, namespace: str | None = None,
                     label_selector: str | None = None) -> list[dict[str, Any]]:
        """Current objects (copies) sorted by namespace and name."""
        served = self._served(resource)
        return self._objects_of(served, self._select(served, namespace, None, label_selector, None))

    def create_object(self, resource: ResourceRef, body: Mapping[str, Any], *,
                      namespace: str | None = None) -> dict[str, Any]:
        """Create as a POST would (no write-log entry); ApiError on failure."""
        return self._create(self._served(resource), namespace, dict(body))

    def patch_object(self, resource: ResourceRef, name: str, patch: Any, *, namespace: str | None = None,
                     status: bool = False, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        """Patch as a PATCH would (``status=True`` for the subresource); ApiError on failure."""
        served = self._served(resource)
        if status and not served.has_status:
            raise served.not_found(name)
        return self._patch(served, namespace, name, "status" if status else None,
                           patch=patch, content_type=content_type)

    def delete_object(self, resource: ResourceRef, name: str, *,
                      namespace: str | None = None) -> dict[str, Any]:
        """Delete as a DELETE would; returns the marked object or the Status of the removal."""
        return self._delete(self._served(resource), namespace, name, None)[0]

    def writes(self, *, method: str | None = None, resource: ResourceRef | None = None,
               namespace: str | EllipsisType | None = ..., name: str | EllipsisType | None = ...,
               subresource: str | EllipsisType | None = ...) -> list[WriteRecord]:
        """Filter :attr:`write_log`; ``...`` means "any", ``None`` means "absent"."""
        wanted = self._served(resource).resource if resource is not None else None
        return [
            record for record in self.write_log
            if (method is None or record.method == method.upper())
            and (wanted is None or record.resource == wanted)
            and (namespace is ... or record.namespace == namespace)
            and (name is ... or record.name == name)
            and (subresource is ... or record.subresource == subresource)
        ]

    # ---------------------------------------------------------------- HTTP: parsing & dispatch

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Mirrors kmock's RawHandler.__call__ but parses the request with parse_api_path() (kmock's
        # parser fails on /api/v1/namespaces) and keeps the write log.
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        record: WriteRecord | None = None
        try:
            if self.limit is not None and self._request_count >= self.limit:
                raise ApiError(429, "TooManyRequests", "the emulator's request limit is reached")
            request = await self._parse_request(raw_request, self._request_count)
            self._request_count += 1
            self._requests.append(request)
            if self.request_history_limit is not None and \
                    len(self._requests) > self.request_history_limit:
                del self._requests[:len(self._requests) - self.request_history_limit]
            if raw_request.method.upper() in WRITE_METHODS:
                record = self._record(request, raw_request)
                if request.params.get("dryRun"):  # not a write: kept apart from the write log
                    self.write_log.remove(record)
                    self.dry_run_log.append(record)
            try:
                response = await self._handle(request)
            except StreamingError as exc:
                raw_response = exc.args[0]
                if exc.__cause__ is not None:
                    raise exc.__cause__ from None
                raise
        except Exception as exc:
            if not self._errors:  # outside of `async with emulator`
                raise
            self._errors[-1].append(exc)
            if raw_response is None or not raw_response.prepared:
                response = await self._render_error(exc)
            else:
                await self._stream_error(exc, raw_response)
                await raw_response.write_eof()
                response = raw_response
        if record is not None:
            record.status = response.status
        return response

    async def _parse_request(self, raw_request: aiohttp.web.BaseRequest, request_id: int) -> kmock.Request:
        body = await raw_request.read()
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        path = parse_api_path(raw_request.path)
        params = dict(raw_request.query)
        method = raw_request.method.upper()
        action: kmock.action | None = None
        if path is not None:
            watch = method == "GET" and parse_bool(params.get("watch")) is True
            if watch:
                action = kmock.action.WATCH
            elif path.name is None:
                action = {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
            else:
                action = {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE,
                          "DELETE": kmock.action.DELETE}.get(method)
        return kmock.Request(
            id=request_id, raw_request=raw_request, url=raw_request.url, method=kmock.method(method),
            params=params, headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            body=body, text=text, data=data, action=action,
            resource=None if path is None else kmock.resource(group=path.group, version=path.version,
                                                               plural=path.plural),
            namespace=None if path is None else path.namespace,
            name=None if path is None else path.name,
            subresource=None if path is None else path.subresource,
        )

    def _record(self, request: kmock.Request, raw_request: aiohttp.web.BaseRequest) -> WriteRecord:
        name = request.name
        if name is None and request.method == kmock.method.POST and isinstance(request.data, dict):
            meta = request.data.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
        resource = request.resource
        record = WriteRecord(
            method=raw_request.method.upper(), path=raw_request.path, params=dict(request.params),
            content_type=raw_request.content_type, data=request.data,
            timestamp=time.monotonic(), wall_time=time.time(),
            resource=resource if resource is not None and resource.plural is not None else None,
            namespace=request.namespace, name=name, subresource=request.subresource)
        self.write_log.append(record)
        return record

    @staticmethod
    def _is_resource_request(request: kmock.Request) -> bool:
        return request.resource is not None and request.resource.plural is not None

    @staticmethod
    def _serve_natively(request: kmock.Request) -> None:
        raise _ServeNatively

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip KubernetesEmulator._handle (it mutates the state before any reaction is consulted);
        # kmock's dispatcher runs user reactions, the discovery, and our _serve_natively fallback.
        try:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        except _ServeNatively:
            pass
        try:
            return await self._serve(request)
        except ApiError as exc:
            return exc.response()

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiError):
            return exc.response()
        if isinstance(exc, kmock.KubernetesError):  # kmock's discovery errors, e.g. an unknown group
            code = exc.status
            return ApiError(code, _REASONS.get(code, "InternalError" if code >= 500 else "BadRequest"),
                            exc.message or str(exc.reason)).response()
        return await super()._render_error(exc)  # 500 with the traceback: a bug to look at

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        # kmock reports the core group as "/v1" and gives subresources their parent's verbs.
        payload = await super()._serve_version(request)
        if isinstance(payload, dict):
            payload["groupVersion"] = str(payload.get("groupVersion", "")).removeprefix("/")
            for entry in payload.get("resources") or []:
                if "/" in entry.get("name", ""):
                    entry["verbs"] = ["get", "patch", "update"]
                entry["verbs"] = sorted(entry.get("verbs") or [])
        return payload

    def _verb_allowed(self, served: _Served, verb: str) -> None:
        if served.info.verbs and verb not in served.info.verbs:
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                           f"resource ({verb} {served.display})")

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        dry_run = request.params.get("dryRun")
        if dry_run not in (None, "All"):
            raise _bad_request(f'unsupported dry run value "{dry_run}" (only "All" is)')
        token = _DRY_RUN.set(dry_run == "All")
        try:
            return await self._serve_resource(request)
        finally:
            _DRY_RUN.reset(token)

    async def _serve_resource(  # noqa: PLR0911, PLR0912 - one dispatch of the API verbs
            self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None
        assert request._raw_request is not None
        res = request.resource
        if res in self.resources:
            served = _Served(res, self.resources[res])
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace, name, subresource = request.namespace, request.name, request.subresource
        if (namespace is not None and not served.namespaced) or \
                (subresource is not None and subresource not in served.info.subresources):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if subresource is not None and subresource != "status":
            raise ApiError(405, "MethodNotAllowed",
                           f"the emulator does not serve {served.display}/{subresource}")
        method = request._raw_request.method.upper()
        params = request.params
        if name is None:
            return await self._serve_collection(request, served, method, params)
        if served.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and parse_bool(params.get("watch")):
            self._verb_allowed(served, "watch")
            return await self._watch(request, served, namespace, name)
        if method == "GET":
            self._verb_allowed(served, "get")
            current = self._live(self._key(served, namespace, name))
            if current is None:
                raise served.not_found(name)
            return aiohttp.web.json_response(current)
        content_type = request._raw_request.content_type
        if method == "PATCH" and content_type == APPLY_PATCH:
            self._verb_allowed(served, "patch")
            return self._server_side_apply(request, served, namespace, name, subresource)
        if method == "PATCH":
            self._verb_allowed(served, "patch")
            result = self._patch(served, namespace, name, subresource,
                                 patch=self._json_body(request), content_type=content_type)
            return aiohttp.web.json_response(result)
        if method == "PUT":
            self._verb_allowed(served, "update")
            self._check_json(content_type)
            result = self._replace(served, namespace, name, subresource, self._json_body(request))
            return aiohttp.web.json_response(result)
        if method == "DELETE" and subresource is None:
            self._verb_allowed(served, "delete")
            options = self._json_body(request) if request.body else None
            result, _gone = self._delete(served, namespace, name, options)
            return aiohttp.web.json_response(result)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {served.display}/{name}")

    async def _serve_collection(self, request: kmock.Request, served: _Served, method: str,
                                params: Mapping[str, str]) -> aiohttp.web.StreamResponse:
        namespace = request.namespace
        if method == "GET" and parse_bool(params.get("watch")):
            self._verb_allowed(served, "watch")
            return await self._watch(request, served, namespace, None)
        if method == "GET":
            self._verb_allowed(served, "list")
            return aiohttp.web.json_response(self._list(served, namespace, params))
        if method == "POST":
            self._verb_allowed(served, "create")
            assert request._raw_request is not None
            self._check_json(request._raw_request.content_type)
            if served.namespaced and namespace is None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the "
                               f"requested resource: create {served.display} needs a namespace in the URL")
            created = self._create(served, namespace, self._json_body(request))
            return aiohttp.web.json_response(created, status=201)
        if method == "DELETE":
            self._verb_allowed(served, "deletecollection")
            return aiohttp.web.json_response(self._delete_collection(served, namespace, params))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {served.display}")

    def _server_side_apply(self, request: kmock.Request, served: _Served, namespace: str | None,
                           name: str, subresource: str | None) -> aiohttp.web.Response:
        """``PATCH`` with ``application/apply-patch+yaml``: create the object when missing, else merge
        the applied configuration into it. Simplified: field ownership is not tracked (a field
        dropped from the applied configuration stays), so neither are conflicts between managers."""
        if not request.params.get("fieldManager"):
            raise _bad_request("PATCH requests with the apply content type require fieldManager")
        import yaml

        try:
            body = yaml.safe_load(request.body or b"")
        except yaml.YAMLError as exc:
            raise _bad_request(f"the body of the request is not valid YAML: {exc}") from exc
        if not isinstance(body, dict):
            raise _bad_request("the applied configuration must be an object")
        for field, expected in (("apiVersion", served.api_version), ("kind", served.kind)):
            if body.get(field) != expected:
                raise _bad_request(f"{field} must be {expected!r} in an applied configuration")
        raw_meta = body.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        if meta.get("name") not in (None, name):
            raise _bad_request(f"the name of the object ({meta.get('name')}) does not match the name on "
                               f"the URL ({name})")
        with self._state_lock:
            if subresource is None and self._live(self._key(served, namespace, name)) is None:
                created = self._create(served, namespace, {**body, "metadata": {**meta, "name": name}})
                return aiohttp.web.json_response(created, status=201)
            result = self._write(served, namespace, name, subresource,
                                 lambda current: merge_patch(current, body))
        return aiohttp.web.json_response(result)

    @staticmethod
    def _check_json(content_type: str) -> None:
        if content_type not in ("", "application/json", "application/octet-stream"):
            raise ApiError(415, "UnsupportedMediaType",
                           f"the emulator accepts JSON bodies only, not {content_type}")

    @staticmethod
    def _json_body(request: kmock.Request) -> Any:
        try:
            return json.loads(request.body)
        except ValueError as exc:
            raise _bad_request(f"the body of the request is not valid JSON: {exc}") from exc

    @_locked
    def _list(self, served: _Served, namespace: str | None, params: Mapping[str, str]) -> dict[str, Any]:
        matches = self._select(served, namespace, None, params.get("labelSelector"),
                               params.get("fieldSelector"))
        items = self._objects_of(served, matches)
        list_rv = self._rv
        token = params.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, start = int(state["rv"]), (str(state["start"][0]), str(state["start"][1]))
            except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as exc:
                raise _bad_request(f"invalid continue token: {exc}") from exc
            items = [obj for obj in items
                     if (obj["metadata"].get("namespace") or "", obj["metadata"]["name"]) > start]
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        try:
            limit = int(params.get("limit") or 0)
        except ValueError as exc:
            raise _bad_request(f"invalid limit: {exc}") from exc
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            state = {"rv": list_rv, "start": [last.get("namespace") or "", last["name"]]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"kind": f"{served.kind}List", "apiVersion": served.api_version, "metadata": meta,
                "items": items}

    # ---------------------------------------------------------------- HTTP: watch streams

    def _view(self, event: WatchEvent, served: _Served,
              matches: _Matcher) -> dict[str, Any] | None:
        """What a watcher with these filters sees of an event (label transitions included)."""
        if event.resource != served.resource:
            return None
        now_in = matches(event.obj)
        was_in = event.old is not None and matches(event.old)
        if event.type == "ADDED":
            kind = "ADDED" if now_in else None
        elif event.type == "DELETED":
            kind = "DELETED" if now_in or was_in else None
        else:
            kind = ("MODIFIED" if was_in else "ADDED") if now_in else ("DELETED" if was_in else None)
        return None if kind is None else {"type": kind, "object": event.obj}

    async def _watch(self, request: kmock.Request, served: _Served, namespace: str | None,
                     name: str | None) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None
        params = request.params
        matches = self._select(served, namespace, name, params.get("labelSelector"),
                               params.get("fieldSelector"))
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as exc:
            raise _bad_request(f"invalid timeoutSeconds: {exc}") from exc
        send_initial = parse_bool(params.get("sendInitialEvents")) is True
        asked = params.get("resourceVersion") or ""
        initial: list[dict[str, Any]] = []
        expired: ApiError | None = None
        with self._state_lock:
            if asked not in ("", "0") and not send_initial:
                try:
                    since = int(asked)
                except ValueError as exc:
                    raise _bad_request(f"invalid resourceVersion: {asked}") from exc
                if since < self._compacted_rv:
                    expired = self._expired(since)
            else:  # the current state as synthetic ADDED events, then the changes after it
                since = self._rv
                initial = [{"type": "ADDED", "object": obj} for obj in self._objects_of(served, matches)]
            self._active_watches += 1
        try:
            response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request._raw_request)
            if expired is not None:
                await self._send(response, {"type": "ERROR", "object": expired.status()})
                return response
            for event in initial:
                await self._send(response, event)
            if send_initial:
                await self._send(response, {"type": "BOOKMARK", "object": {
                    "kind": served.kind, "apiVersion": served.api_version,
                    "metadata": {"resourceVersion": str(since),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
            await self._stream_events(response, served, matches, since, timeout)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            with self._state_lock:
                self._active_watches -= 1
            self._wake()
        return response

    async def _stream_events(self, response: aiohttp.web.StreamResponse, served: _Served, matches: _Matcher,
                             since: int, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._subscription() as changed:
            while True:
                changed.clear()
                with self._state_lock:
                    if self._closing:
                        return
                    expired = self._expired(since) if since < self._compacted_rv else None
                    start = bisect.bisect_right(self._events, since, key=lambda event: event.resource_version)
                    pending = self._events[start:]
                if expired is not None:
                    await self._send(response, {"type": "ERROR", "object": expired.status()})
                    return
                for event in pending:
                    since = event.resource_version
                    view = self._view(event, served, matches)
                    if view is not None:
                        await self._send(response, view)
                if pending:
                    continue
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    return

    def _expired(self, since: int) -> ApiError:
        return ApiError(410, "Expired", f"too old resource version: {since} ({self._compacted_rv})")

    @staticmethod
    async def _send(response: aiohttp.web.StreamResponse, event: Mapping[str, Any]) -> None:
        await response.write(json.dumps(event).encode("utf-8") + b"\n")


# --------------------------------------------------------------------------------------------
# Serving


@dataclasses.dataclass(frozen=True, slots=True)
class RunningKubeEmulator:
    """A served emulator: ``url`` is the API base URL (``http://127.0.0.1:PORT``, no trailing slash)."""

    emulator: FleetKubeEmulator
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kopf_connection_info(self, *, default_namespace: str | None = None) -> kopf.ConnectionInfo:
        """What a ``@kopf.on.login`` handler returns to point kopf at this emulator."""
        import kopf

        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace=default_namespace)


class KubeEmulatorServer:
    """Serves an emulator over HTTP from a dedicated thread with its own event loop.

    Why a thread: kopf (and similar frameworks) cancel, on their shutdown, every task created
    after they started; served in the tests' loop, the emulator's connection tasks would be
    reaped (kopf waits 5 s for them, then cancels them, and kept-alive client connections hang).
    In its own loop the server is also immune to a test blocking its loop, and a session-scoped
    fixture can share it between tests. Use :func:`start_kube_emulator` (async) or this class as a
    (sync) context manager; ``start()``/``stop()`` block.
    """

    def __init__(self, emulator: FleetKubeEmulator | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, timeout: float = 10.0) -> None:
        self.emulator = emulator if emulator is not None else FleetKubeEmulator()
        self._host, self._port, self._timeout = host, port, timeout
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._running: RunningKubeEmulator | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> RunningKubeEmulator:
        if self._running is None:
            raise RuntimeError("the emulator is not being served")
        return self._running

    def start(self) -> RunningKubeEmulator:
        if self._thread is not None:
            raise RuntimeError("a KubeEmulatorServer starts only once")
        with self.emulator._state_lock:
            self.emulator._closing = False
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(self._timeout):
            raise TimeoutError(f"the kube emulator did not start within {self._timeout}s")
        if self._error is not None:
            raise self._error
        return self.running

    def stop(self) -> None:
        """End the watches, stop the server and its thread; re-raise a failure of the server side."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(self._timeout)
        if thread.is_alive():
            raise TimeoutError(f"the kube emulator did not stop within {self._timeout}s")
        self._running = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> RunningKubeEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed over to start()/stop()
            self._error = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        emulator = self.emulator
        # aiohttp's test server directly, not kmock.Server: that one also patches aiohttp's DNS
        # resolver process-wide (LIFO-only unpatching) and opens a client bound to this loop.
        # no access log: its lines would reach handlers bound to streams pytest has closed
        server = aiohttp.test_utils.RawTestServer(emulator, host=self._host, port=self._port,
                                                  access_log=None)
        async with emulator, server:
            assert server.port is not None
            self._running = RunningKubeEmulator(emulator, server.host, server.port)
            self._started.set()
            await self._stop.wait()
            emulator.close_watches()  # else the server's shutdown waits for the streaming handlers
            await emulator.wait_until(lambda: emulator.active_watches == 0, self._timeout)


@contextlib.asynccontextmanager
async def start_kube_emulator(
    emulator: FleetKubeEmulator | None = None, *, host: str = "127.0.0.1", port: int | None = None,
) -> AsyncIterator[RunningKubeEmulator]:
    """Serve an emulator (a fresh :class:`FleetKubeEmulator` unless given) on ``host``, a random port.

    The server runs in its own thread and loop (see :class:`KubeEmulatorServer`). On exit, open
    watch streams are ended and the server stops; clients still connected get disconnected.
    """
    server = KubeEmulatorServer(emulator, host=host, port=port)
    running = await asyncio.to_thread(server.start)
    try:
        yield running
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def serve_kube_emulator(
    emulator: FleetKubeEmulator | None = None, *, host: str = "127.0.0.1", port: int | None = None,
) -> Iterator[RunningKubeEmulator]:
    """The synchronous twin of :func:`start_kube_emulator` (e.g. for session-scoped fixtures)."""
    with KubeEmulatorServer(emulator, host=host, port=port) as running:
        yield running


@contextlib.asynccontextmanager
async def embedded_kopf(
    registry: kopf.OperatorRegistry, *, settings: kopf.OperatorSettings | None = None,
    clusterwide: bool = True, namespaces: Sequence[str] = (), standalone: bool = True,
    ready_timeout: float = 10.0, stop_timeout: float = 10.0,
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``kopf.operator`` in a task until the block ends, then stop it via its stop flag.

    The registry must carry a ``@kopf.on.login`` handler (e.g. returning
    :meth:`RunningKubeEmulator.kopf_connection_info`). Waits for kopf's ready flag (its startup
    handlers ran); a failing operator re-raises its error here, on entry or exit. Mind kopf's
    rule on stopping: it cancels every task created after it started, so tasks a test spawns
    inside this block must be finished before the block ends.
    """
    import kopf

    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, settings=settings, clusterwide=clusterwide, namespaces=namespaces,
        standalone=standalone, stop_flag=stop_flag, ready_flag=ready_flag), name="embedded kopf")
    try:
        ready = asyncio.ensure_future(ready_flag.wait())
        try:
            await asyncio.wait({ready, task}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        if task.done():
            await task  # re-raise why it ended
            raise RuntimeError("kopf exited during its startup")
        if not ready_flag.is_set():
            raise TimeoutError(f"kopf was not ready within {ready_timeout}s")
        yield task
    finally:
        stop_flag.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), stop_timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
