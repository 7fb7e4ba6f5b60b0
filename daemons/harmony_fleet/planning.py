"""Pure control-plane logic shared by the operator and the ``fleet_deployment`` module.

* :func:`selector_matches` — Kubernetes LabelSelector semantics over device labels;
* :func:`device_online` — liveness from the last heartbeat;
* :func:`plan_desired_keys` — which ``desired-state`` keys to put, keep or delete so that
  exactly the targeted devices hold a deployment's score, touching nothing that is already
  right (an unchanged value is never rewritten: a rewrite would bump the revision and make
  agents look again for nothing);
* :func:`seal_for_devices` — a score template plus plaintext secrets becomes one value per
  device, each secret sealed to that device's published key. Sealing is deterministic, so the
  same secrets give the same bytes again and nothing is rewritten;
* :func:`shown_value` — a desired-state value as it may be shown (diffs): secrets redacted.

No I/O: inputs are plain values, outputs are plain values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from harmony_fleet.contracts import (
    MAX_DESIRED_STATE_BYTES,
    Heartbeat,
    PodmanScore,
    ScoreTemplate,
    canonical_json,
    redact_score,
    seal,
)
from harmony_fleet.contracts.crd import LabelSelector, SelectorOperator
from harmony_fleet.contracts.sealing import generate_private_key, public_key_of
from harmony_fleet.errors import FleetError, InvalidInput


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """``matchLabels`` AND every requirement; the empty selector matches everything."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator is SelectorOperator.IN and (not present or labels[req.key] not in req.values):
            return False
        if req.operator is SelectorOperator.NOT_IN and present and labels[req.key] in req.values:
            return False
        if req.operator is SelectorOperator.EXISTS and not present:
            return False
        if req.operator is SelectorOperator.DOES_NOT_EXIST and present:
            return False
    return True


def selector_contradiction(selector: LabelSelector) -> str | None:
    """Why ``selector`` can match no device at all (whatever their labels), or None.

    A selector that matches no device *now* is fine (devices come and go); one whose own
    terms exclude each other is a mistake worth refusing: a required value the selector also
    excludes, a key both required and forbidden, two different required values.
    """
    required: dict[str, set[str]] = {k: {v} for k, v in selector.match_labels.items()}
    present: set[str] = set(selector.match_labels)
    absent: set[str] = set()
    excluded: dict[str, set[str]] = {}
    for req in selector.match_expressions:
        if req.operator is SelectorOperator.IN:
            allowed = set(req.values)
            required[req.key] = required[req.key] & allowed if req.key in required else allowed
            present.add(req.key)
        elif req.operator is SelectorOperator.NOT_IN:
            excluded.setdefault(req.key, set()).update(req.values)
        elif req.operator is SelectorOperator.EXISTS:
            present.add(req.key)
        else:
            absent.add(req.key)
    for key in sorted(present & absent):
        return f"label {key!r} must both exist and not exist"
    for key, values in sorted(required.items()):
        if not values - excluded.get(key, set()):
            return f"no value of label {key!r} satisfies every term"
    return None


def device_online(heartbeat: Heartbeat | None, now: datetime, offline_after: timedelta) -> bool:
    """Online: a heartbeat no older than ``offline_after``."""
    return heartbeat is not None and now - heartbeat.timestamp <= offline_after


def matching_devices(
    selector: LabelSelector, device_labels: Mapping[str, Mapping[str, str]]
) -> list[str]:
    return sorted(d for d, labels in device_labels.items() if selector_matches(selector, labels))


def score_bytes(score: ScoreTemplate) -> bytes:
    """The desired-state value written for a score: canonical JSON, so equal scores are equal bytes."""
    return canonical_json(score.model_dump(mode="json"))


class ScoreTooLarge(InvalidInput):
    """A desired-state value over :data:`MAX_DESIRED_STATE_BYTES`, the limit the bucket, the
    agent and every writer share: refused before anything is written."""


def revision_of(score: ScoreTemplate, secrets: Mapping[str, bytes]) -> str:
    """A short name for a score with its secrets (digests only): what a rollout rolls out."""
    digest = hashlib.sha256(score_bytes(score))
    for name, value in sorted(secrets.items()):
        digest.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(value).digest())
    return digest.hexdigest()[:16]


def check_value_size(value: bytes, what: str = "score") -> bytes:
    """``value`` if it fits a desired-state entry, else :class:`ScoreTooLarge`."""
    if len(value) > MAX_DESIRED_STATE_BYTES:
        raise ScoreTooLarge(f"{what} is {len(value)} bytes, the limit is "
                            f"{MAX_DESIRED_STATE_BYTES}")
    return value


def check_score_size(template: ScoreTemplate, deployment: str,
                     secrets: Mapping[str, bytes]) -> None:
    """Would ``template`` (with ``secrets`` sealed) fit a desired-state entry? A sealed value
    is as long for every device key, so one probe key answers for all of them."""
    if secrets:
        probe = public_key_of(generate_private_key())
        value = score_bytes(seal_score(template, deployment, secrets, probe))
    else:
        value = score_bytes(PodmanScore.model_validate(template.model_dump(mode="json")))
    check_value_size(value, "the score (with its secrets sealed)" if secrets else "score")


class MissingSealingKeys(FleetError, ValueError):
    """Devices that must receive secrets have published no key to seal them to."""

    def __init__(self, devices: Iterable[str]) -> None:
        self.devices = sorted(devices)
        super().__init__(
            f"cannot seal secrets for {', '.join(self.devices)}: no sealing key in device-info "
            "(the agent predates secrets, runs without its container runtime, or has not "
            "reported yet)"
        )


class SealingCache:
    """Envelopes already computed: sealing is deterministic, so an unchanged secret for an
    unchanged key need not be sealed again (an X25519 exchange and two HKDFs, ~0.4 ms each:
    seconds per plan for a large fleet). Keyed by a digest of the plaintext; holds no
    plaintext. Bounded: the oldest entries go first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._envelopes: dict[tuple[str, str, str, bytes], str] = {}

    def seal(self, recipient: str, deployment: str, name: str, plaintext: bytes) -> str:
        key = (recipient, deployment, name, hashlib.sha256(plaintext).digest())
        envelope = self._envelopes.get(key)
        if envelope is None:
            envelope = seal(recipient, deployment, name, plaintext)
            if len(self._envelopes) >= self.max_entries:
                del self._envelopes[next(iter(self._envelopes))]
            self._envelopes[key] = envelope
        return envelope

    def __len__(self) -> int:
        return len(self._envelopes)


def seal_score(template: ScoreTemplate, deployment: str, secrets: Mapping[str, bytes],
               recipient: str, *, cache: SealingCache | None = None) -> PodmanScore:
    """``template`` with every secret of ``secrets`` sealed to ``recipient`` (a public key as
    published in device-info). ValueError if a reference has no value."""
    template.check_references(secrets)
    sealer = cache.seal if cache is not None else seal
    return PodmanScore.model_validate({
        **template.model_dump(mode="json"),
        "secrets": {name: sealer(recipient, deployment, name, value)
                    for name, value in sorted(secrets.items())},
    })


def seal_for_devices(
    template: ScoreTemplate, deployment: str, secrets: Mapping[str, bytes],
    keys: Mapping[str, str | None], targets: Iterable[str], *, cache: SealingCache | None = None,
) -> dict[str, bytes]:
    """device -> desired-state value for every target: the same bytes for all when there are
    no secrets, otherwise each device's own sealing. :class:`MissingSealingKeys` names every
    target without a key (nothing is sealed then)."""
    targets = sorted(set(targets))
    if not secrets:
        template.check_references(())
        value = check_value_size(score_bytes(PodmanScore.model_validate(
            template.model_dump(mode="json"))))
        return dict.fromkeys(targets, value)
    missing = [d for d in targets if not keys.get(d)]
    if missing:
        raise MissingSealingKeys(missing)
    return {d: check_value_size(score_bytes(seal_score(template, deployment, secrets,
                                                       keys[d] or "", cache=cache)))
            for d in targets}


def shown_value(value: bytes | None, before: bytes | None = None) -> Any:
    """A desired-state value fit to show: the parsed document with its sealed values redacted
    (those that differ from ``before`` marked as changed); None for no value."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return "(not valid JSON)"
    if not isinstance(doc, dict):
        return "(not a JSON object)"
    changed: set[str] = set()
    if isinstance(doc.get("secrets"), dict):
        old = _secrets_of(before)
        changed = {n for n, v in doc["secrets"].items() if before is not None and old.get(n) != v}
    return redact_score(doc, changed=changed)


def _secrets_of(value: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(value) if value is not None else {}
    except (ValueError, RecursionError):
        return {}
    secrets = doc.get("secrets") if isinstance(doc, dict) else None
    return secrets if isinstance(secrets, dict) else {}


def same_value(current: bytes | None, wanted: bytes) -> bool:
    """Compare by meaning (JSON), not by bytes: another writer may format differently."""
    if current is None:
        return False
    if current == wanted:
        return True
    try:
        return bool(json.loads(current) == json.loads(wanted))
    except (ValueError, RecursionError):  # unreadable: different, so it gets overwritten
        return False


@dataclass
class KeyPlan:
    put: dict[str, bytes] = field(default_factory=dict)  # device -> value (new or changed)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.put or self.delete)


def plan_desired_keys(
    targets: Iterable[str], value: bytes | Mapping[str, bytes] | None,
    current: Mapping[str, bytes],
) -> KeyPlan:
    """Make exactly ``targets`` hold ``value`` (``None``: the deployment is being removed).

    ``value`` is one value for every target, or device -> value (a score with secrets is
    sealed per device; every target must have one). ``current`` is device -> value of this
    deployment's existing keys.
    """
    plan = KeyPlan()
    wanted = set(targets) if value is not None else set()
    values: Mapping[str, bytes] = (
        dict.fromkeys(wanted, value) if isinstance(value, bytes) else value or {})
    for device in sorted(wanted):
        existing = current.get(device)
        wanted_value = values[device]
        if same_value(existing, wanted_value):
            plan.unchanged.append(device)
        else:
            plan.put[device] = wanted_value
            (plan.updated if existing is not None else plan.created).append(device)
    plan.delete = sorted(set(current) - wanted)
    return plan
