"""View models: what each page shows, computed from a :class:`~.source.FleetSnapshot` (pure:
no I/O, the clock passed in). Pages never hold more rows than their page size; filtering and
paging happen here, on the server.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from harmony_fleet.contracts import (
    DeploymentState,
    DeviceInfo,
    Heartbeat,
    InvalidIdError,
    Phase,
    PodmanScore,
    parse_deployment_token,
    validate_deployment_token,
    validate_device_id,
)
from harmony_fleet.contracts.info import validate_label_key, validate_label_value
from harmony_fleet.errors import InvalidInput
from harmony_fleet.planning import device_online, shown_value

from .config import MAX_PAGE_SIZE
from .source import DeploymentResource, FleetSnapshot

__all__ = ["FleetSnapshot"]  # re-exported for the app

#: How many rows the overview's attention lists show before "and N more".
ATTENTION_ROWS = 10
PHASES = [p.value for p in Phase]
Online = Literal["any", "online", "offline"]


class NotFound(InvalidInput, LookupError):
    """The page names a device or deployment the fleet does not have."""


# ------------------------------------------------------------------------------- queries


def _page_number(text: str | None) -> int:
    if text in (None, ""):
        return 1
    assert text is not None
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise InvalidInput(f"page {text!r}: expected a page number")
    return int(text)


def _per_page(text: str | None, default: int) -> int:
    if text in (None, ""):
        return default
    assert text is not None
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise InvalidInput(f"per_page {text!r}: expected 1 to {MAX_PAGE_SIZE}")
    return int(text)


@dataclass(frozen=True)
class LabelFilter:
    """``key=value`` (that value) or ``key`` (any value)."""

    key: str
    value: str | None

    @classmethod
    def parse(cls, text: str) -> LabelFilter:
        key, sep, value = text.partition("=")
        try:
            validate_label_key(key)
            if sep:
                validate_label_value(value)
        except ValueError as exc:
            raise InvalidInput(f"label filter {text!r}: {exc}") from None
        return cls(key, value if sep else None)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value

    def __str__(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


@dataclass(frozen=True)
class DeviceQuery:
    q: str = ""
    label: LabelFilter | None = None
    online: Online = "any"
    page: int = 1
    per_page: int = 50
    default_per_page: int = 50

    @classmethod
    def parse(cls, params: Mapping[str, str], default_per_page: int) -> DeviceQuery:
        q = (params.get("q") or "").strip()
        if len(q) > 63:
            raise InvalidInput("q: at most 63 characters (a device id is a DNS label)")
        online = params.get("online") or "any"
        if online not in ("any", "online", "offline"):
            raise InvalidInput(f"online {online!r}: expected any, online or offline")
        label_text = (params.get("label") or "").strip()
        return cls(q=q.lower(), label=LabelFilter.parse(label_text) if label_text else None,
                   online=online,  # type: ignore[arg-type]  # checked above
                   page=_page_number(params.get("page")),
                   per_page=_per_page(params.get("per_page"), default_per_page),
                   default_per_page=default_per_page)

    def params(self, **changes: Any) -> dict[str, str]:
        """Query parameters of this query with ``changes`` (what links carry), defaults left out."""
        values: dict[str, Any] = {"q": self.q, "label": str(self.label) if self.label else "",
                                  "online": self.online, "page": self.page,
                                  "per_page": self.per_page, **changes}
        defaults = {"q": "", "label": "", "online": "any", "page": 1,
                    "per_page": self.default_per_page}
        return {k: str(v) for k, v in values.items() if v is not None and defaults.get(k) != v}

    def url(self, path: str, **changes: Any) -> str:
        params = self.params(**changes)
        return f"{path}?{urlencode(params)}" if params else path


@dataclass(frozen=True)
class Page:
    number: int
    pages: int
    total: int
    first: int  # 1-based index of the first row shown (0 when there is none)
    last: int

    @classmethod
    def of(cls, total: int, number: int, per_page: int) -> Page:
        pages = max(1, math.ceil(total / per_page))
        number = min(number, pages)
        first = (number - 1) * per_page
        last = min(total, first + per_page)
        return cls(number, pages, total, first + 1 if total else 0, last)

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages

    def slice(self, rows: list[Any]) -> list[Any]:
        return rows[self.first - 1 if self.first else 0:self.last]


# ------------------------------------------------------------------------------- helpers


def age_text(when: datetime | None, now: datetime) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``; ``never``."""
    if when is None:
        return "never"
    seconds = (now - when).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def memory_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def deployment_label(token: str) -> str:
    """``shop/web`` for ``shop_web``; the token itself when it has no namespace."""
    namespace, name = parse_deployment_token(token)
    return f"{namespace}/{name}" if namespace else name


# ------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    online: bool
    last_seen: str
    labels: dict[str, str]
    agent_version: str
    arch: str
    deployments: int
    failed: int


def _row(device: str, info: DeviceInfo, snapshot: FleetSnapshot, online: bool,
         now: datetime) -> DeviceRow:
    beat = snapshot.heartbeats.get(device)
    states = snapshot.states.get(device, {})
    return DeviceRow(device, online, age_text(beat.timestamp if beat else None, now),
                     dict(info.labels), info.agent_version, info.inventory.arch,
                     len(set(states) | set(snapshot.desired.get(device, {}))),
                     sum(1 for s in states.values() if s.phase is Phase.FAILED))


@dataclass
class DeviceList:
    query: DeviceQuery
    rows: list[DeviceRow]
    page: Page
    label_choices: list[str]
    counts: dict[str, int]


def label_choices(infos: Iterable[DeviceInfo], limit: int = 200) -> list[str]:
    """Distinct ``key=value`` pairs, most common first (for the filter's drop-down)."""
    seen: Counter[str] = Counter()
    for info in infos:
        for key, value in info.labels.items():
            seen[f"{key}={value}"] += 1
    return [pair for pair, _count in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def device_list(snapshot: FleetSnapshot, query: DeviceQuery, *, now: datetime,
                offline_after: timedelta, order: Sequence[str] | None = None,
                labels: list[str] | None = None) -> DeviceList:
    """The devices that pass the query, one page of them, sorted by id.

    ``order`` (every device id, sorted) and ``labels`` (:func:`label_choices`) may be given
    from a cache: at 10,000 devices they are most of the work and change slowly."""
    cutoff = now - offline_after  # online: a heartbeat no older than offline_after
    beats, infos = snapshot.heartbeats, snapshot.infos
    want_online = {"online": True, "offline": False}.get(query.online)
    matched: list[tuple[str, bool]] = []
    for device in order if order is not None else sorted(infos):
        info = infos.get(device)
        if info is None or (query.q and query.q not in device):
            continue
        if query.label is not None and not query.label.matches(info.labels):
            continue
        beat = beats.get(device)
        online = beat is not None and beat.timestamp >= cutoff
        if want_online is not None and online != want_online:
            continue
        matched.append((device, online))
    page = Page.of(len(matched), query.page, query.per_page)
    rows = [_row(d, infos[d], snapshot, online, now) for d, online in page.slice(matched)]
    return DeviceList(query, rows, page,
                      labels if labels is not None else label_choices(infos.values()),
                      {"matched": len(matched), "all": len(infos)})


@dataclass(frozen=True)
class DeviceDeployment:
    token: str
    label: str
    desired: bool
    desired_revision: str
    phase: str | None
    message: str
    up_to_date: bool | None
    since: str
    services: list[dict[str, Any]]
    service_names: list[str]


@dataclass
class DeviceDetail:
    device_id: str
    online: bool
    last_seen: str
    uptime_s: int | None
    info: DeviceInfo
    memory: str
    deployments: list[DeviceDeployment]
    #: (deployment token, service) pairs whose logs can be asked for
    log_targets: list[tuple[str, str]]
    offline_after_s: float


def _service_names(value: bytes | None, state: DeploymentState | None) -> list[str]:
    names: list[str] = []
    if value is not None:
        try:
            names = [s.name for s in PodmanScore.model_validate_json(value).services]
        except ValueError:
            names = []
    if state is not None:
        names += [s.name for s in state.services if s.name not in names]
    return names


def device_detail(snapshot: FleetSnapshot, device_id: str, *, now: datetime,
                  offline_after: timedelta) -> DeviceDetail:
    try:
        validate_device_id(device_id)
    except InvalidIdError as exc:
        raise NotFound(str(exc)) from None
    info = snapshot.infos.get(device_id)
    if info is None:
        raise NotFound(f"device {device_id} has not published device-info (not enrolled, "
                       "never connected, or a misspelt id)")
    beat: Heartbeat | None = snapshot.heartbeats.get(device_id)
    desired = snapshot.desired.get(device_id, {})
    states = snapshot.states.get(device_id, {})
    rows: list[DeviceDeployment] = []
    targets: list[tuple[str, str]] = []
    for token in sorted(set(desired) | set(states)):
        value, state = desired.get(token), states.get(token)
        wanted = None
        if value is not None:
            try:
                wanted = PodmanScore.model_validate_json(value).spec_hash()
            except ValueError:
                wanted = None
        names = _service_names(value, state)
        targets += [(token, name) for name in names]
        rows.append(DeviceDeployment(
            token=token, label=deployment_label(token), desired=value is not None,
            desired_revision="yes" if value is not None else "no (removed)",
            phase=state.phase.value if state else None,
            message=state.message if state else "",
            up_to_date=(state.spec_hash == wanted) if state and wanted else None,
            since=age_text(state.since, now) if state else "",
            services=[s.model_dump(mode="json") for s in state.services] if state else [],
            service_names=names))
    return DeviceDetail(device_id, device_online(beat, now, offline_after),
                        age_text(beat.timestamp if beat else None, now),
                        beat.uptime_s if beat else None, info,
                        memory_text(info.inventory.memory_bytes), rows, targets,
                        offline_after.total_seconds())


# ------------------------------------------------------------------------------- deployments


@dataclass
class RolloutProgress:
    """A Deployment's rollout as the operator reports it in ``status.rollout`` (shown where a
    strategy other than AllAtOnce is set). Field names are the CRD's ``RolloutStatus``:
    ``strategy``, ``phase`` (Progressing, Paused, Complete), ``currentBatch``/``totalBatches``,
    ``batchSize``, ``batchUpdated``/``batchSucceeded``/``batchFailed``/``batchPending`` (the
    current batch), ``updated`` (devices holding the current score), ``pauseReason``,
    ``message``, ``failingDevices``; the operator's bookkeeping fields are not shown."""

    strategy: str
    phase: str | None = None
    batch: int | None = None
    batches: int | None = None
    done: int | None = None
    total: int | None = None
    current: list[tuple[str, int]] = field(default_factory=list)
    message: str = ""
    pause_reason: str | None = None
    failing: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)


#: status.rollout keys that are the operator's memory, not something to show
_BOOKKEEPING = frozenset({"batchStartUpdated", "batchStartFailed", "acknowledgedFailures",
                          "acceptedBatch", "resumeToken"})


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def rollout_progress(resource: DeploymentResource | None) -> RolloutProgress | None:
    """The rollout of a Deployment with a strategy other than AllAtOnce; None otherwise."""
    if resource is None:
        return None
    status = resource.status.get("rollout")
    status = status if isinstance(status, Mapping) else {}
    strategy = str(resource.rollout.get("strategy") or status.get("strategy") or "AllAtOnce")
    if strategy == "AllAtOnce":
        return None
    if not status:
        return RolloutProgress(strategy, message="no progress reported yet")
    aggregate = resource.status.get("aggregate")
    matched = _int(aggregate.get("matchedDeviceCount")) if isinstance(aggregate, Mapping) \
        else None
    failing = status.get("failingDevices")
    current = [(label, count) for label, key in (
        ("given the score", "batchUpdated"), ("succeeded", "batchSucceeded"),
        ("failed", "batchFailed"), ("pending", "batchPending"))
        if (count := _int(status.get(key))) is not None]
    shown = {"revision", "batchSize"}
    return RolloutProgress(
        strategy, phase=str(status["phase"]) if status.get("phase") else None,
        batch=_int(status.get("currentBatch")), batches=_int(status.get("totalBatches")),
        done=_int(status.get("updated")), total=matched, current=current,
        message=str(status.get("message") or ""),
        pause_reason=str(status["pauseReason"]) if status.get("pauseReason") else None,
        failing=[str(d) for d in failing] if isinstance(failing, list) else [],
        fields=[(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
                for k, v in sorted(status.items()) if k in shown and k not in _BOOKKEEPING])


@dataclass
class DeploymentRow:
    token: str
    label: str
    devices: int
    phases: dict[str, int]
    failed: int
    last_error: str
    resource: DeploymentResource | None
    rollout: RolloutProgress | None


@dataclass(frozen=True)
class DeploymentQuery:
    q: str = ""
    phase: str = ""
    page: int = 1
    per_page: int = 50

    @classmethod
    def parse(cls, params: Mapping[str, str], default_per_page: int) -> DeploymentQuery:
        q = (params.get("q") or "").strip().lower()
        if len(q) > 127:
            raise InvalidInput("q: at most 127 characters")
        phase = params.get("phase") or ""
        if phase and phase not in PHASES and phase != "Unreported":
            raise InvalidInput(f"phase {phase!r}: expected one of {', '.join(PHASES)}, Unreported")
        return cls(q, phase, _page_number(params.get("page")),
                   _per_page(params.get("per_page"), default_per_page))

    def url(self, path: str, **changes: Any) -> str:
        values: dict[str, Any] = {"q": self.q, "phase": self.phase, "page": self.page, **changes}
        params = {k: str(v) for k, v in values.items() if v not in ("", None) and
                  not (k == "page" and v == 1)}
        return f"{path}?{urlencode(params)}" if params else path


DeploymentIndex = dict[str, dict[str, Any]]


def deployment_index(snapshot: FleetSnapshot) -> DeploymentIndex:
    """token -> {"devices": set of devices told or reporting, "phases": Counter, "error": str}."""
    index: dict[str, dict[str, Any]] = {}

    def entry(token: str) -> dict[str, Any]:
        return index.setdefault(token, {"devices": set(), "phases": Counter(), "error": ""})

    for device, tokens in snapshot.desired.items():
        for token in tokens:
            entry(token)["devices"].add(device)
    for device, states in snapshot.states.items():
        for token, state in states.items():
            item = entry(token)
            item["devices"].add(device)
            item["phases"][state.phase.value] += 1
            if state.phase is Phase.FAILED and not item["error"]:
                item["error"] = f"{device}: {state.message}"
    for token in snapshot.resources or {}:
        entry(token)
    return index


def deployment_list(snapshot: FleetSnapshot, query: DeploymentQuery,
                    index: DeploymentIndex | None = None) -> tuple[list[DeploymentRow], Page]:
    """One row per deployment; ``index`` (:func:`deployment_index`) may come from a cache."""
    rows: list[DeploymentRow] = []
    resources = snapshot.resources or {}
    for token, item in sorted((index or deployment_index(snapshot)).items()):
        if query.q and query.q not in token:
            continue
        phases: Counter[str] = item["phases"]
        unreported = len(item["devices"]) - sum(phases.values())
        if query.phase == "Unreported" and unreported <= 0:
            continue
        if query.phase and query.phase != "Unreported" and not phases.get(query.phase):
            continue
        resource = resources.get(token)
        rows.append(DeploymentRow(
            token, deployment_label(token), len(item["devices"]),
            {p: phases[p] for p in PHASES if phases.get(p)} | (
                {"Unreported": unreported} if unreported > 0 else {}),
            phases.get(Phase.FAILED.value, 0), item["error"], resource,
            rollout_progress(resource)))
    page = Page.of(len(rows), query.page, query.per_page)
    return page.slice(rows), page


@dataclass(frozen=True)
class DeviceStateRow:
    device_id: str
    online: bool
    desired: bool
    phase: str | None
    message: str
    since: str
    up_to_date: bool | None


DEPLOYMENT_TABS = ("devices", "spec", "status")


@dataclass
class DeploymentDetail:
    token: str
    label: str
    tab: str
    query: DeploymentQuery
    rows: list[DeviceStateRow]
    page: Page
    phases: dict[str, int]
    resource: DeploymentResource | None
    rollout: RolloutProgress | None
    #: the score as one device holds it, sealed values redacted (buckets only: no resource)
    score_shown: str | None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    aggregate: dict[str, Any] = field(default_factory=dict)


def deployment_detail(snapshot: FleetSnapshot, token: str, tab: str, query: DeploymentQuery,
                      *, now: datetime, offline_after: timedelta,
                      index: DeploymentIndex | None = None) -> DeploymentDetail:
    try:
        validate_deployment_token(token)
    except InvalidIdError as exc:
        raise NotFound(str(exc)) from None
    if tab not in DEPLOYMENT_TABS:
        raise InvalidInput(f"tab {tab!r}: expected one of {', '.join(DEPLOYMENT_TABS)}")
    index = index if index is not None else deployment_index(snapshot)
    if token not in index:
        raise NotFound(f"deployment {token} is neither desired on any device nor reported by one")
    devices = sorted(index[token]["devices"])
    resource = (snapshot.resources or {}).get(token)
    phases: Counter[str] = Counter()
    selected: list[DeviceStateRow] = []
    example: bytes | None = None
    for device in devices:
        state = snapshot.states.get(device, {}).get(token)
        value = snapshot.desired.get(device, {}).get(token)
        if example is None and value is not None:
            example = value
        phase = state.phase.value if state else None
        phases[phase or "Unreported"] += 1
        wanted_phase = query.phase
        if wanted_phase and (phase or "Unreported") != wanted_phase:
            continue
        selected.append(DeviceStateRow(device, False, value is not None, phase,
                                       state.message if state else "",
                                       age_text(state.since, now) if state else "", None))
    page = Page.of(len(selected), query.page, query.per_page)
    rows = []
    for row in page.slice(selected):  # liveness and hashes for the rows shown only
        state = snapshot.states.get(row.device_id, {}).get(token)
        value = snapshot.desired.get(row.device_id, {}).get(token)
        up_to_date = None
        if state is not None and value is not None and state.spec_hash:
            try:
                up_to_date = PodmanScore.model_validate_json(value).spec_hash() == state.spec_hash
            except ValueError:
                up_to_date = None
        rows.append(DeviceStateRow(
            row.device_id, device_online(snapshot.heartbeats.get(row.device_id), now,
                                         offline_after),
            row.desired, row.phase, row.message, row.since, up_to_date))
    shown = shown_value(example) if example is not None else None
    status = resource.status if resource else {}
    return DeploymentDetail(
        token, deployment_label(token), tab, query, rows, page,
        {p: phases[p] for p in [*PHASES, "Unreported"] if phases.get(p)}, resource,
        rollout_progress(resource),
        json.dumps(shown, indent=2, sort_keys=True) if shown is not None else None,
        [c for c in status.get("conditions") or [] if isinstance(c, dict)],
        dict(status.get("aggregate") or {}))


# ------------------------------------------------------------------------------- overview


@dataclass
class Overview:
    devices: int
    online: int
    offline: int
    phases: dict[str, int]
    offline_rows: list[DeviceRow]
    failed_rows: list[tuple[str, str, str]]  # device, deployment token, message
    failed_total: int
    deployments: int
    problems: list[str]


def overview(snapshot: FleetSnapshot, *, now: datetime, offline_after: timedelta) -> Overview:
    cutoff = now - offline_after
    beats = snapshot.heartbeats
    offline = sorted(d for d in snapshot.infos
                     if (beat := beats.get(d)) is None or beat.timestamp < cutoff)
    phases: Counter[str] = Counter()
    failed: list[tuple[str, str, str]] = []
    for device, states in snapshot.states.items():
        for token, state in states.items():
            phases[state.phase.value] += 1
            if state.phase is Phase.FAILED:
                failed.append((device, token, state.message))
    failed.sort()
    return Overview(
        devices=len(snapshot.infos), online=len(snapshot.infos) - len(offline),
        offline=len(offline), phases={p: phases[p] for p in PHASES if phases.get(p)},
        offline_rows=[_row(d, snapshot.infos[d], snapshot, False, now)
                      for d in offline[:ATTENTION_ROWS]],
        failed_rows=failed[:ATTENTION_ROWS], failed_total=len(failed),
        deployments=len({t for tokens in snapshot.desired.values() for t in tokens}
                        | {t for states in snapshot.states.values() for t in states}
                        | set(snapshot.resources or {})),
        problems=list(snapshot.problems))
