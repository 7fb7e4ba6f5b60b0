"""NATS URLs are checked where every daemon and client reads them: ``NatsSettings``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from harmony_fleet.bus.profile import ConnectionConfigError, resolve_settings
from harmony_fleet.bus.settings import NatsSettings, check_nats_url


@pytest.mark.parametrize("url", [
    "nats://127.0.0.1:4222", "nats://nats.example.net", "tls://nats.example.net:4443",
    "ws://127.0.0.1:8080", "wss://h:443", "nats://[::1]:4222", "nats://user:pw@h:4222",
    "nats://h:4222/",
])
def test_urls_nats_py_connects_to_are_accepted(url: str) -> None:
    assert check_nats_url(url) == url
    assert NatsSettings(urls=[url]).urls == [url]


@pytest.mark.parametrize(("url", "why"), [
    ("nats//x", "expected nats://HOST:PORT"),
    ("127.0.0.1:4222", "expected nats://HOST:PORT"),
    ("http://x:4222", "the scheme must be one of nats://, tls://, ws://, wss://"),
    ("nats://x:99999", "the port must be a number from 1 to 65535"),
    ("nats://x:abc", "the port must be a number from 1 to 65535"),
    ("nats://x:0", "the port must be a number from 1 to 65535"),
    ("nats://:4222", "it names no host"),
    ("nats://x:4222/path", "nothing may follow HOST:PORT"),
    ("nats://x:4222?a=b", "nothing may follow HOST:PORT"),
    ("", "empty or contains spaces"),
    (" nats://x:4222", "empty or contains spaces"),
])
def test_malformed_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="is not a NATS URL") as err:
        check_nats_url(url)
    assert why in str(err.value)
    with pytest.raises(ValidationError, match="is not a NATS URL"):
        NatsSettings(urls=["nats://ok:4222", url])


def test_a_password_in_a_refused_url_is_not_repeated() -> None:
    with pytest.raises(ValueError, match="it names no host") as err:
        check_nats_url("nats://admin:hunter2-secret@:4222")
    assert "hunter2-secret" not in str(err.value)
    assert "***@" in str(err.value)


def test_clients_get_one_clear_line_for_a_bad_url() -> None:
    with pytest.raises(ConnectionConfigError) as err:
        resolve_settings(url="nats://a:4222,http://b:4222", use_environment=False)
    assert "urls.1" in str(err.value)
    assert "'http://b:4222' is not a NATS URL" in str(err.value)
    assert "\n" not in str(err.value)
