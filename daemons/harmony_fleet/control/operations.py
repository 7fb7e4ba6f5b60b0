"""What the Ansible plugins and the ``fleet`` CLI do on the fleet, over one NATS connection.

Each operation takes the connection and a JSON-able argument dict and returns a JSON-able
result; :func:`execute` shapes success and every failure into one answer document, the same
whether it runs in the shared broker (:mod:`.broker`) or on a connection of its own.

Failures are typed, and the type a client sees is the name of an exception class of this
package, never a free-form word. Each operation declares the classes it reports
(:data:`OPERATIONS`); besides those, any operation may report :class:`InvalidInput` (its
arguments) and :class:`InternalError` (an exception nobody expected: a bug). An exception is
reported under the most specific declared class it is an instance of, so a
:class:`~harmony_fleet.contracts.KeyFormatError` is reported as ``InvalidInput`` and a
:class:`~harmony_fleet.bus.kv.RevisionMismatch` as itself, not as its base ``KVError``. The
Ansible modules document exactly these names (a unit test holds them to it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from harmony_fleet.bus.commands import (
    DEFAULT_TIMEOUT_S,
    BadReply,
    CommandTimeout,
    DeviceOffline,
    FleetCommandsClient,
    RemoteError,
    TransportError,
)
from harmony_fleet.bus.kv import KVError, RevisionMismatch
from harmony_fleet.contracts import (
    DEFAULT_OFFLINE_AFTER_S,
    MAX_FOLLOW_S,
    DeploymentToken,
    DeviceId,
    validation_summary,
)
from harmony_fleet.contracts.score import SecretName
from harmony_fleet.errors import FleetError, InternalError, InvalidInput
from harmony_fleet.planning import MissingSealingKeys

from .fleetview import DeviceNotFound

log = logging.getLogger(__name__)

#: The module's ``secrets``: name -> plaintext (text; it is sealed as UTF-8).
_SECRETS: TypeAdapter[dict[str, str]] = TypeAdapter(dict[SecretName, str])

#: Most output a ``logs`` operation returns; the stream is cancelled beyond it (use ``tail``).
MAX_LOGS_OUTPUT_BYTES = 1024 * 1024

Handler = Callable[[NatsClient, dict[str, Any]], Awaitable[dict[str, Any]]]


class _Args(BaseModel):
    """An operation's arguments: unknown ones are errors (a plugin and a broker that disagree)."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- device commands


class PingArgs(_Args):
    device_id: DeviceId
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)


async def op_ping(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    args = PingArgs.model_validate(raw)
    client = FleetCommandsClient(nc, timeout=args.timeout)
    started = time.perf_counter()
    reply = await client.ping(args.device_id)
    return {
        "reply": reply.model_dump(mode="json"),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }


class LogsArgs(_Args):
    device_id: DeviceId
    deployment: DeploymentToken
    service: str
    tail: int | None = Field(default=None, ge=0)
    since: str | None = None
    follow: bool = False
    follow_timeout: int = Field(default=10, ge=1, le=MAX_FOLLOW_S)
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)


async def op_logs(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    """A service's output (at most :data:`MAX_LOGS_OUTPUT_BYTES`), as text and as lines."""
    args = LogsArgs.model_validate(raw)
    client = FleetCommandsClient(nc, timeout=args.timeout)
    parts: list[str] = []
    size, truncated = 0, False
    stream = client.logs(args.device_id, args.deployment, args.service, tail=args.tail,
                         since=args.since, follow=args.follow,
                         follow_timeout_s=args.follow_timeout)
    try:
        async for chunk in stream:
            parts.append(chunk)
            size += len(chunk.encode())
            if size > MAX_LOGS_OUTPUT_BYTES:
                truncated = True
                break
    finally:
        await stream.aclose()  # leaving early cancels the stream on the device
    output = "".join(parts)
    return {"output": output, "lines": output.splitlines(), "truncated": truncated}


class ExecArgs(_Args):
    device_id: DeviceId
    deployment: DeploymentToken
    service: str
    argv: list[str] = Field(min_length=1)
    command_timeout: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)


async def op_exec(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    args = ExecArgs.model_validate(raw)
    client = FleetCommandsClient(nc, timeout=args.timeout)
    reply = await client.exec(args.device_id, args.deployment, args.service, args.argv,
                              timeout_s=args.command_timeout)
    return {"rc": reply.exit_code, "output": reply.output, "truncated": reply.truncated,
            "timed_out": reply.timed_out}


# ----------------------------------------------------------------------------- deployments


class DeployArgs(_Args):
    name: str
    namespace: str = "default"
    state: Literal["present", "absent"] = "present"
    score: dict[str, Any] | None = None
    secrets: dict[str, Any] = Field(default_factory=dict)
    devices: list[str] | None = None
    selector: dict[str, Any] | None = None
    check_mode: bool = False
    #: spec.rollout's options in snake_case (strategy, batch_size, batch_percent, ...)
    rollout: dict[str, Any] | None = None
    #: what the previous call's rollout step handed on (a module under ``wait``)
    rollout_memory: dict[str, Any] | None = None


async def op_deploy(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    """Converge one deployment's desired-state keys (the ``fleet_deployment`` module).

    ``secrets`` (name -> plaintext) are sealed to each target device's published key; no
    plaintext and no sealed value is ever part of the result (the diff is redacted). Waiting
    for the outcome is :func:`op_rollout_status`, polled by the caller.
    """
    from harmony_fleet.contracts import deployment_token
    from harmony_fleet.contracts.crd import LabelSelector, Rollout, RolloutStrategy
    from harmony_fleet.planning import (
        check_score_size,
        revision_of,
        seal_for_devices,
        selector_contradiction,
        shown_value,
    )

    from .deploy import (
        apply_desired_state,
        resolve_targets,
        rollout_step,
        sealing_keys,
        step_document,
    )

    args = DeployArgs.model_validate(raw)
    token = deployment_token(args.namespace, args.name)
    present = args.state == "present"
    try:
        policy = Rollout.model_validate(args.rollout or {})
    except ValidationError as exc:
        raise InvalidInput(f"rollout: {validation_summary(exc)}") from None
    rollout: dict[str, Any] | None = None
    matching: list[str] = []
    values: dict[str, bytes] | None = None
    targets: list[str] = []
    if present:
        if args.score is None:
            raise InvalidInput("deploy: state=present needs a score")
        template = _template(args.score)
        try:
            secrets = _SECRETS.validate_python(args.secrets)
        except ValidationError as exc:  # the summary names keys and rules, never values
            raise InvalidInput(f"secrets: {validation_summary(exc)}") from None
        try:
            template.check_references(secrets)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        check_score_size(template, token, {n: v.encode() for n, v in secrets.items()})
        if args.devices is None and args.selector is None:
            raise InvalidInput("deploy: state=present needs devices or a selector "
                               "(selector: {} targets every device)")
        selector = (LabelSelector.model_validate(args.selector)
                    if args.selector is not None else None)
        if selector is not None and (why := selector_contradiction(selector)) is not None:
            raise InvalidInput(f"selector: it can match no device: {why}")
        targets = await resolve_targets(nc, args.devices, selector)
        keys = await sealing_keys(nc, targets) if secrets else {}
        plain = {n: v.encode() for n, v in secrets.items()}
        values = seal_for_devices(template, token, plain, keys, targets)
        if policy.strategy is not RolloutStrategy.ALL_AT_ONCE:
            step = await rollout_step(nc, token, policy, revision_of(template, plain), values,
                                      memory=args.rollout_memory)
            rollout = step_document(step)
            matching, targets = targets, step.targets
            values = {d: values[d] for d in targets}
    plan, before, revisions = await apply_desired_state(
        nc, token, values, targets, check_mode=args.check_mode, keep=matching)
    hashes = {d: _hash_of(v) for d, v in (values or {}).items()}
    distinct = set(hashes.values())
    return {
        "rollout": rollout,
        "deployment": token,
        "changed": plan.changed,
        "targets": targets,
        "created": plan.created,
        "updated": plan.updated,
        "unchanged": plan.unchanged,
        "removed": plan.delete,
        # one hash when every device holds the same score; with secrets each has its own
        "spec_hash": distinct.pop() if len(distinct) == 1 else None,
        "spec_hashes": hashes,
        # device -> revision of its key after this call: reports about older ones are stale
        "revisions": {d: revisions[d] for d in sorted(values or {}) if d in revisions},
        "diff": {
            "before": {d: shown_value(v) for d, v in sorted(before.items())},
            "after": {d: shown_value(v, before.get(d)) for d, v in sorted((values or {}).items())},
        },
    }


class RolloutArgs(_Args):
    deployment: DeploymentToken
    devices: list[DeviceId]
    spec_hashes: dict[str, str] = Field(default_factory=dict)
    revisions: dict[str, int] = Field(default_factory=dict)
    removed: bool = False


async def op_rollout_status(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    """Where a rollout stands now (see :func:`.deploy.rollout_progress`); one read, no wait."""
    from .deploy import read_states, rollout_progress, state_summary

    args = RolloutArgs.model_validate(raw)
    states = await read_states(nc, args.deployment, args.devices)
    progress = rollout_progress(args.devices, args.spec_hashes, states, removed=args.removed,
                                revisions=args.revisions)
    return {"done": progress.done, "ok": progress.ok, "counts": progress.counts,
            "states": state_summary(states)}


def _template(score: Any) -> Any:
    from harmony_fleet.contracts import ScoreTemplate

    if isinstance(score, dict) and "secrets" in score:
        # sealed values are per device: a score cannot carry them for every target
        raise InvalidInput("score.secrets cannot be given: pass the plaintext values in the "
                           "module's secrets option, they are sealed to each device")
    return ScoreTemplate.model_validate(score)


def _hash_of(value: bytes) -> str:
    from harmony_fleet.contracts import PodmanScore

    try:
        return PodmanScore.model_validate_json(value).spec_hash()
    except ValueError:
        return "(not a valid score)"


# ----------------------------------------------------------------------------- reads, KV


class DeviceInfoArgs(_Args):
    device_id: DeviceId
    offline_after: float = Field(default=DEFAULT_OFFLINE_AFTER_S, gt=0)


async def op_device_info(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    from .fleetview import read_device

    args = DeviceInfoArgs.model_validate(raw)
    return await read_device(nc.jetstream(), args.device_id,
                             timedelta(seconds=args.offline_after))


class KeyArgs(_Args):
    bucket: str
    key: str


class GetArgs(KeyArgs):
    revision: int | None = Field(default=None, ge=1)


class SelectArgs(_Args):
    bucket: str
    pattern: str


class PutArgs(KeyArgs):
    value: Any
    revision: int | None = Field(default=None, ge=0)
    check_mode: bool = False


class DeleteArgs(KeyArgs):
    revision: int | None = Field(default=None, ge=1)
    check_mode: bool = False


async def op_kv_get(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    from .keyvalue import read_key

    args = GetArgs.model_validate(raw)
    return await read_key(nc, args.bucket, args.key, revision=args.revision)


async def op_kv_select(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    from .keyvalue import read_keys

    args = SelectArgs.model_validate(raw)
    return {"values": await read_keys(nc, args.bucket, args.pattern)}


async def op_kv_put(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    from .keyvalue import write_key

    args = PutArgs.model_validate(raw)
    change = await write_key(nc, args.bucket, args.key, args.value, revision=args.revision,
                             check_mode=args.check_mode)
    return change.as_dict()


async def op_kv_delete(nc: NatsClient, raw: dict[str, Any]) -> dict[str, Any]:
    from .keyvalue import delete_key

    args = DeleteArgs.model_validate(raw)
    change = await delete_key(nc, args.bucket, args.key, revision=args.revision,
                              check_mode=args.check_mode)
    return change.as_dict()


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Operation:
    """A named operation and the exception classes it reports (besides :data:`ALWAYS`)."""

    handler: Handler
    errors: tuple[type[FleetError], ...]


#: What every operation may report: bad arguments, and a bug.
ALWAYS: tuple[type[FleetError], ...] = (InvalidInput, InternalError)
#: What a request to a device may end in (:mod:`harmony_fleet.bus.commands`).
COMMAND_ERRORS: tuple[type[FleetError], ...] = (
    DeviceOffline, CommandTimeout, BadReply, TransportError, RemoteError)

OPERATIONS: dict[str, Operation] = {
    "ping": Operation(op_ping, COMMAND_ERRORS),
    "logs": Operation(op_logs, COMMAND_ERRORS),
    "exec": Operation(op_exec, COMMAND_ERRORS),
    "deploy": Operation(op_deploy, (MissingSealingKeys, KVError)),
    "rollout_status": Operation(op_rollout_status, (KVError,)),
    "device_info": Operation(op_device_info, (DeviceNotFound, KVError)),
    "kv_get": Operation(op_kv_get, (KVError,)),
    "kv_select": Operation(op_kv_select, (KVError,)),
    "kv_put": Operation(op_kv_put, (RevisionMismatch, KVError)),
    "kv_delete": Operation(op_kv_delete, (RevisionMismatch, KVError)),
}


def operation_errors(op: str) -> list[str]:
    """The error names ``op`` can report, sorted (what the modules document)."""
    return sorted(c.__name__ for c in (*ALWAYS, *OPERATIONS[op].errors))


def error_document(exc: FleetError, reported: tuple[type[FleetError], ...]) -> dict[str, Any]:
    """The answer's ``error``: the most specific class of ``reported`` that ``exc`` is an
    instance of, its message, and for a :class:`RemoteError` the device's ``kind``."""
    name = next(c.__name__ for c in type(exc).__mro__ if c in reported)
    doc: dict[str, Any] = {"type": name, "message": str(exc)}
    if isinstance(exc, RemoteError):
        doc["kind"] = exc.kind.value
    return doc


async def execute(nc: NatsClient, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one operation and shape the answer (also used without a broker)."""
    operation = OPERATIONS.get(op)
    if operation is None:
        return {"ok": False, "error": error_document(
            InvalidInput(f"unknown operation {op!r}: this harmony_fleet knows "
                         f"{', '.join(sorted(OPERATIONS))}"), ALWAYS)}
    reported = (*ALWAYS, *operation.errors)
    try:
        return {"ok": True, "result": await operation.handler(nc, args)}
    except ValidationError as exc:  # the summary names fields and rules, never values
        failure: FleetError = InvalidInput(f"{op}: {validation_summary(exc)}")
    except reported as exc:
        failure = exc
    except Exception as exc:
        log.exception("operation %s failed unexpectedly", op)
        failure = InternalError(f"{op}: {type(exc).__name__}: {exc}")
    return {"ok": False, "error": error_document(failure, reported)}
