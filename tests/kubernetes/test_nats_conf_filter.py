"""The nats role's filter renders nats.conf through harmony_fleet.natsconf: what it renders is
what the local stack's generator renders, and nats-server accepts it (with TLS too)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harmony_fleet.callout.nkjwt import new_nkey, new_xkey

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _collection_loader() -> None:
    """Make ``ansible_collections.harmony.fleet`` importable from this checkout."""
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    collections = REPO / ".collections"
    _AnsibleCollectionFinder(paths=[str(collections)], scan_sys_paths=False)._install()


def _filter() -> Any:
    module = importlib.import_module("ansible_collections.harmony.fleet.plugins.filter.server_side")
    return module.nats_server_conf


def settings(tmp_path: Path, **over: Any) -> dict[str, Any]:
    return {"port": 4222, "http_port": 8222, "host": "127.0.0.1", "server_name": "nats-0",
            "store_dir": str(tmp_path / "js"), "callout_password": "c", "writer_password": "w",
            "sys_password": "s", "issuer_public_key": new_nkey("account").public_key,
            "xkey_public_key": new_xkey().public_key, **over}


def _server_test(conf: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    return subprocess.run([str(BIN / "nats-server"), "-t", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)


def test_the_filter_renders_what_natsconf_renders(tmp_path: Path) -> None:
    from harmony_fleet.callout.permissions import writer_permissions
    from harmony_fleet.natsconf import CalloutConfig, ServerConfig, StaticUser, render

    values = settings(tmp_path)
    perms = writer_permissions()
    expected = render(ServerConfig(
        port=4222, http_port=8222, host="127.0.0.1", server_name="nats-0",
        store_dir=tmp_path / "js",
        fleet_users=[StaticUser("writer", "w", {"publish": perms["publish"],
                                                "subscribe": perms["subscribe"]})],
        sys_user=StaticUser("sys", "s"),
        callout=CalloutConfig(values["issuer_public_key"], [StaticUser("callout", "c")],
                              values["xkey_public_key"])))
    assert _filter()(values) == expected
    tested = _server_test(expected, tmp_path)
    assert tested.returncode == 0, tested.stderr


def test_tls_settings_render_a_tls_block_nats_server_accepts(tmp_path: Path) -> None:
    from harmony_fleet.localstack.tls import make_lab_pki

    pki = make_lab_pki(tmp_path / "pki")
    conf = _filter()(settings(tmp_path, tls_cert_file=str(pki.cert_file),
                              tls_key_file=str(pki.key_file), tls_ca_file=str(pki.ca_file),
                              tls_verify=True))
    assert "tls {" in conf
    assert "verify: true" in conf
    tested = _server_test(conf, tmp_path)
    assert tested.returncode == 0, tested.stderr


@pytest.mark.parametrize(("over", "message"), [
    ({"sys_password": ""}, "missing settings: sys_password"),
    ({"colour": "blue"}, "unknown settings: colour"),
    ({"tls_cert_file": "/c", "tls_verify": True}, "verify (client certificates) needs ca_file"),
])
def test_bad_settings_are_refused_naming_them(tmp_path: Path, over: dict[str, Any],
                                              message: str) -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _filter()(settings(tmp_path, **over))
