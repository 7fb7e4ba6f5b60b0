"""One error root: every exception class harmony_fleet defines derives from FleetError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import harmony_fleet
from harmony_fleet.errors import FleetError, InvalidInput


def package_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(harmony_fleet.__path__, prefix="harmony_fleet."):
        module = importlib.import_module(info.name)
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_package_exception_derives_from_fleet_error() -> None:
    classes = package_exceptions()
    # the walk finds the classes of every layer (a broken walk must not pass vacuously)
    modules = {c.__module__.split(".")[1] for c in classes}
    assert {"contracts", "bus", "agent", "callout", "operator", "control", "localstack"} <= modules
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes
                    if not issubclass(c, FleetError))
    assert strays == []


@pytest.mark.parametrize(
    ("dotted", "base"),
    [
        ("harmony_fleet.contracts.ids.InvalidIdError", ValueError),
        ("harmony_fleet.contracts.kv.KeyFormatError", ValueError),
        ("harmony_fleet.contracts.sealing.SealingError", ValueError),
        ("harmony_fleet.contracts.commands.ReplyDecodeError", ValueError),
        ("harmony_fleet.bus.profile.ConnectionConfigError", ValueError),
        ("harmony_fleet.bus.connection.ConnectError", ConnectionError),
        ("harmony_fleet.bus.tokens.TokenError", RuntimeError),
        ("harmony_fleet.config.ConfigError", ValueError),
        ("harmony_fleet.planning.MissingSealingKeys", ValueError),
        ("harmony_fleet.contracts.ids.InvalidIdError", InvalidInput),
        ("harmony_fleet.contracts.kv.KeyFormatError", InvalidInput),
    ],
)
def test_the_bases_callers_catch_are_kept(dotted: str, base: type[BaseException]) -> None:
    module, _, name = dotted.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), name), base)
