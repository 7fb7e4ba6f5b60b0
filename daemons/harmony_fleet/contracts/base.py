"""Shared pieces of the wire models: base classes, canonical JSON, readable validation errors."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError


class WireModel(BaseModel):
    """A payload another component reads; unknown fields are ignored (newer writers)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class StrictWireModel(BaseModel):
    """A payload whose every field must be understood (workloads): typos are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON (sorted keys, no whitespace): the input of every hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_hash(value: Any) -> str:
    """A short, stable content hash of a JSON-able value (first 16 hex chars of SHA-256)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    return hashlib.sha256(canonical_json(value)).hexdigest()[:16]


def validation_summary(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``; no input values (they may be secrets)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """A timestamp without a zone is taken as UTC; every timestamp is stored in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


#: Wire timestamps: ISO 8601; a missing zone means UTC (so they always compare).
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
