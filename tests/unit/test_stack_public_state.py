"""What the local stack shows on a terminal: its state document without secrets (pure)."""

from __future__ import annotations

import copy
from typing import Any

from harmony_fleet.localstack.stack import public_state

DEV = {
    "version": 1, "auth_mode": "dev", "nats_url": "nats://127.0.0.1:4222",
    "connection": {"urls": ["nats://127.0.0.1:4222"],
                   "auth": {"mode": "userpass", "user": "admin", "password": "hunter2-xyz"}},
    "devices": [{"device_id": "local-0", "key_file": None}],
}
CALLOUT = {
    "version": 1, "auth_mode": "callout",
    "connection": {"urls": ["nats://127.0.0.1:4222"],
                   "auth": {"mode": "zitadel", "issuer": "http://127.0.0.1:5000",
                            "key_file": "/tmp/x/secrets/admin-zitadel-key.json",
                            "project_id": "fleet-project"}},
    "issuer": {"url": "http://127.0.0.1:5000", "admin_key_file": "/tmp/x/admin.json"},
}


def test_the_dev_admin_password_is_replaced_by_where_it_is() -> None:
    before = copy.deepcopy(DEV)
    shown = public_state(DEV)
    assert "hunter2-xyz" not in repr(shown)
    assert shown["connection"]["auth"] == {"mode": "userpass", "user": "admin",
                                           "secrets_in_state_file": ["password"]}
    assert {k: v for k, v in shown.items() if k != "connection"} == \
        {k: v for k, v in DEV.items() if k != "connection"}
    assert before == DEV  # the state itself (what the file gets) is untouched


def test_a_state_without_secrets_is_shown_whole() -> None:
    assert public_state(CALLOUT) == CALLOUT


def test_unknown_auth_fields_are_hidden_by_default() -> None:
    state: dict[str, Any] = copy.deepcopy(CALLOUT)
    state["connection"]["auth"] |= {"token": "eyJhbGciOi.secret", "client_secret": "s3"}
    shown = public_state(state)
    assert "eyJhbGciOi.secret" not in repr(shown)
    assert "s3" not in repr(shown["connection"])
    assert shown["connection"]["auth"]["secrets_in_state_file"] == ["client_secret", "token"]
    assert shown["connection"]["auth"]["key_file"] == "/tmp/x/secrets/admin-zitadel-key.json"


def test_documents_without_a_connection_pass_through() -> None:
    assert public_state({"version": 1}) == {"version": 1}
    assert public_state({"connection": "odd"}) == {"connection": "odd"}
