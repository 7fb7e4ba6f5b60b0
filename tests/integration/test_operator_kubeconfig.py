"""The operator's Kubernetes credentials from a kubeconfig, against the harness's Kubernetes API
emulator (plain HTTP: a kubeconfig may name an http:// server): a static token, an exec
credential plugin run again once its token expires (and after a 401), the fleet-operator command
failing clearly at start-up on a missing or malformed kubeconfig, and kopf's login handler
handing kopf the same credentials with the plugin's expiry."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf
import pytest
import yaml

from harmony_fleet.operator import kubeconfig as kc
from harmony_fleet.operator.config import KubeSection
from harmony_fleet.operator.kube import KubeClient, KubeError, KubeTarget, lease_path
from harmony_fleet.operator.kubeconfig import KubeconfigError
from harmony_fleet.operator.main import build_registry
from harmony_fleet.operator.main import main as operator_main
from harmony_fleet_harness.kube_emulator import (
    RunningKubeEmulator,
    embedded_kopf,
    start_kube_emulator,
)

NS = "operator-kubeconfig"

PLUGIN = """\
import datetime, json, os, pathlib, sys
counter = pathlib.Path(sys.argv[1])
count = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(count))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=float(sys.argv[2]))
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": {
    "token": f"{os.environ['TOKEN_PREFIX']}-{count}",
    "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


@pytest.fixture
async def kube() -> AsyncIterator[RunningKubeEmulator]:
    async with start_kube_emulator() as running:
        yield running


@pytest.fixture(autouse=True)
def _no_ambient(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the machine's KUBECONFIG, ~/.kube/config nor a pod's environment leak in."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(kc, "EXPIRY_SKEW_S", 0.0)


def write_kubeconfig(path: Path, server: str, user: dict[str, Any], *,
                     context: str = "emu") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "emu", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": context, "context": {"cluster": "emu", "user": "me",
                                                  "namespace": NS}}],
    }))
    return path


def seen_tokens(kube: RunningKubeEmulator) -> list[str | None]:
    """The Authorization headers of the Lease requests the emulator received, in order."""
    return [request.headers.get("Authorization")
            for request in kube.emulator._requests  # kmock keeps every request it served
            if "/leases" in str(request.url)]


async def lease_round_trip(client: KubeClient, name: str) -> None:
    await client.create(lease_path(NS),
                        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": name, "namespace": NS}, "spec": {}})
    assert await client.get(lease_path(NS, name)) is not None


async def test_static_token_from_kubeconfig(kube: RunningKubeEmulator, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", kube.url, {"token": "static-secret"})
    target = KubeSection(kubeconfig=path).target()
    assert target.server == kube.url
    async with KubeClient(target) as client:
        await lease_round_trip(client, "static")
    assert seen_tokens(kube) == ["Bearer static-secret"] * 2


async def test_kubeconfig_from_the_environment_and_a_named_context(
        kube: RunningKubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent"
    path = write_kubeconfig(tmp_path / "config", kube.url, {"token": "env-secret"},
                            context="other")
    # KUBECONFIG may list absent files (as kubectl); the present one is merged
    monkeypatch.setenv("KUBECONFIG", f"{missing}:{path}")
    async with KubeClient(KubeSection().target()) as client:
        await lease_round_trip(client, "env")
    assert seen_tokens(kube) == ["Bearer env-secret"] * 2
    with pytest.raises(KubeconfigError, match="context 'nope' is not defined"):
        KubeSection(context="nope").target()


async def test_exec_plugin_runs_again_after_expiry(kube: RunningKubeEmulator,
                                                   tmp_path: Path) -> None:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "count"
    path = write_kubeconfig(tmp_path / "config", kube.url, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": ["plugin.py", str(counter), "3"],  # relative: the kubeconfig's directory
        "env": [{"name": "TOKEN_PREFIX", "value": "exec"}],
        "interactiveMode": "Never"}})
    target = KubeSection(kubeconfig=path).target()
    async with KubeClient(target) as client:
        await lease_round_trip(client, "exec")
        assert counter.read_text() == "1"  # two calls, one plugin run: the token is kept
        _, expires = target.token_and_expiry()
        assert expires is not None
        # past the expiry (whole seconds in the timestamp): the plugin runs again
        await asyncio.sleep(max(0.0, expires.timestamp() - time.time()) + 0.2)
        assert await client.get(lease_path(NS, "exec")) is not None
    assert counter.read_text() == "2"
    assert seen_tokens(kube) == ["Bearer exec-1", "Bearer exec-1", "Bearer exec-2"]


@pytest.fixture
async def refusing() -> AsyncIterator[tuple[list[str | None], str]]:
    """A server that refuses the token ``revoked-1`` with 401 (as an API server does for a
    revoked token) and answers any other request; it records the Authorization headers."""
    seen: list[str | None] = []

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") == "Bearer revoked-1":
            return aiohttp.web.json_response({"kind": "Status", "message": "Unauthorized"},
                                              status=401)
        return aiohttp.web.json_response({"kind": "Lease", "metadata": {"name": "x"}})

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield seen, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_exec_plugin_runs_again_on_401(refusing: tuple[list[str | None], str],
                                             tmp_path: Path) -> None:
    seen, url = refusing
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "count"
    path = write_kubeconfig(tmp_path / "config", url, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
        "args": [str(tmp_path / "plugin.py"), str(counter), "3600"],
        "env": [{"name": "TOKEN_PREFIX", "value": "revoked"}]}})
    target = KubeSection(kubeconfig=path).target()
    async with KubeClient(target) as client:
        # a create too: nothing was done on a 401, so it is safe to send again
        assert await client.create(lease_path(NS), {"metadata": {"name": "x"}}) is not None
        assert await client.get(lease_path(NS, "x")) is not None
    assert counter.read_text() == "2"  # once, then once more after the 401, then kept
    assert seen == ["Bearer revoked-1", "Bearer revoked-2", "Bearer revoked-2"]


async def test_a_second_401_is_an_error(refusing: tuple[list[str | None], str],
                                        tmp_path: Path) -> None:
    seen, url = refusing
    target = KubeTarget(url, "revoked-1")  # a static token: nothing to refresh
    async with KubeClient(target) as client:
        with pytest.raises(KubeError) as failure:
            await client.get(lease_path(NS, "x"))
    assert failure.value.status == 401
    assert seen == ["Bearer revoked-1"]


@pytest.mark.parametrize(("content", "needle"), [
    (None, "no such file"),
    ("clusters: [\n", "unreadable (ParserError)"),
    ("- just\n- a list\n", "not a mapping"),
    ("clusters: []\nusers: []\ncontexts: []\n", "no current-context"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\n",
     "cluster 'x' is not defined"),
    ("current-context: c\nclusters: [{name: x, cluster: {server: 'ftp://h'}}]\n"
     "contexts: [{name: c, context: {cluster: x}}]\n", "server is not an http(s) URL"),
    ("current-context: c\nclusters: [{name: x, cluster: {server: 'http://h'}}]\n"
     "users: [{name: u, user: {auth-provider: {name: oidc}}}]\n"
     "contexts: [{name: c, context: {cluster: x, user: u}}]\n", "'auth-provider' is not"),
    ("current-context: c\nclusters: [{name: x, cluster: {server: 'http://h', "
     "certificate-authority: ca.pem}}]\ncontexts: [{name: c, context: {cluster: x}}]\n",
     "certificate-authority"),
])
def test_bad_kubeconfig_stops_the_daemon_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
        needle: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    if content is not None:
        kubeconfig.write_text(content)
    with pytest.raises(KubeconfigError, match=re.escape(needle)):
        KubeSection(kubeconfig=kubeconfig).target()
    config = tmp_path / "config.toml"
    # an unreachable NATS: the daemon must stop before it tries to connect
    config.write_text(f'[kube]\nkubeconfig = "{kubeconfig}"\n[nats]\nurls = ["nats://127.0.0.1:1"]\n'
                      '[operator]\nprobe_listen = "127.0.0.1:0"\n')
    started = time.monotonic()
    assert operator_main(["--config", str(config)]) == 2
    assert time.monotonic() - started < 5
    assert needle.split(" (", maxsplit=1)[0] in capsys.readouterr().err
    assert operator_main(["--config", str(config), "--check-config"]) == 2


def test_exec_plugin_failures_are_typed(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    cases = {
        "import sys; sys.stderr.write('login needed'); sys.exit(3)": "exited 3: login needed",
        "print('not json')": "output is not JSON",
        "print('{\"kind\": \"ExecCredential\", \"apiVersion\": \"v9\"}')": "not an ExecCredential",
        ("print('{\"kind\": \"ExecCredential\", \"apiVersion\": "
         "\"client.authentication.k8s.io/v1\", \"status\": {\"clientCertificateData\": \"x\"}}')"):
            "status.token is missing",
    }
    for code, needle in cases.items():
        script.write_text(code)
        plugin = kc.ExecPlugin(sys.executable, [str(script)])
        with pytest.raises(KubeconfigError, match=needle):
            plugin.token()
    with pytest.raises(KubeconfigError, match="FileNotFoundError"):
        kc.ExecPlugin(str(tmp_path / "no-such-plugin")).token()


def test_client_certificate_data_and_relative_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    cert = base64.b64encode(b"CERT").decode()
    key = base64.b64encode(b"KEY").decode()
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "c",
        "clusters": [{"name": "x", "cluster": {"server": "https://h:6443",
                                               "certificate-authority": "ca.pem"}}],
        "users": [{"name": "u", "user": {"client-certificate-data": cert,
                                         "client-key-data": key}}],
        "contexts": [{"name": "c", "context": {"cluster": "x", "user": "u"}}]}))
    target = KubeSection(kubeconfig=path).target()
    assert target.ca_file == tmp_path / "ca.pem"
    assert target.cert_file is not None
    assert target.key_file is not None
    assert target.cert_file.read_bytes() == b"CERT"
    assert target.key_file.read_bytes() == b"KEY"
    assert target.key_file.stat().st_mode & 0o077 == 0  # the key is not readable by others
    assert target.current_token() is None


def test_no_target_at_all_is_a_typed_error() -> None:
    with pytest.raises(KubeconfigError, match="not in a pod"):
        KubeSection().target()


async def test_kopf_login_gets_the_plugin_token_and_expiry(kube: RunningKubeEmulator,
                                                           tmp_path: Path) -> None:
    """kopf logs in again once ConnectionInfo.expiration has passed: the login handler gives
    the plugin's expiry, and a later login the plugin's next token."""
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "count"
    path = write_kubeconfig(tmp_path / "config", kube.url, {"exec": {
        "command": sys.executable, "args": ["plugin.py", str(counter), "2"],
        "env": [{"name": "TOKEN_PREFIX", "value": "kopf"}]}})
    target = KubeSection(kubeconfig=path).target()
    registry = build_registry(_NoOperator(), target)  # type: ignore[arg-type]
    handlers: list[Any] = [handler.fn for handler in registry._activities.get_all_handlers()
                           if handler.id.endswith(".login")]
    [login] = handlers
    first = login()
    assert first.token == "kopf-1"
    assert first.server == kube.url
    assert first.expiration is not None
    await asyncio.sleep(max(0.0, first.expiration.timestamp() - time.time()) + 0.2)
    assert login().token == "kopf-2"
    # kopf asks again before the expiry only after a 401: the plugin runs again
    assert login().token == "kopf-3"


async def test_concurrent_requests_after_expiry_run_the_plugin_once(
        kube: RunningKubeEmulator, tmp_path: Path) -> None:
    """Many writes in flight (the operator runs up to 64) when the token expires: one plugin
    run serves them all."""
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "count"
    path = write_kubeconfig(tmp_path / "config", kube.url, {"exec": {
        "command": sys.executable, "args": ["plugin.py", str(counter), "3"],
        "env": [{"name": "TOKEN_PREFIX", "value": "many"}]}})
    target = KubeSection(kubeconfig=path).target()
    async with KubeClient(target) as client:
        await asyncio.gather(*(client.get(lease_path(NS, f"l{i}")) for i in range(20)))
        assert counter.read_text() == "1"
        _, expires = target.token_and_expiry()
        assert expires is not None
        await asyncio.sleep(max(0.0, expires.timestamp() - time.time()) + 0.2)
        await asyncio.gather(*(client.get(lease_path(NS, f"l{i}")) for i in range(20)))
    assert counter.read_text() == "2"
    assert seen_tokens(kube) == ["Bearer many-1"] * 20 + ["Bearer many-2"] * 20


def test_certificate_data_files_are_removed_at_exit(tmp_path: Path) -> None:
    """A client key from ``client-key-data`` lives in a private file only while the process
    does."""
    key = base64.b64encode(b"KEY").decode()
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "c",
        "clusters": [{"name": "x", "cluster": {"server": "https://h:6443"}}],
        "users": [{"name": "u", "user": {"client-certificate-data": key,
                                         "client-key-data": key}}],
        "contexts": [{"name": "c", "context": {"cluster": "x", "user": "u"}}]}))
    script = ("import sys; from pathlib import Path; "
              "from harmony_fleet.operator.kubeconfig import load_kubeconfig; "
              "r = load_kubeconfig([Path(sys.argv[1])]); print(r.key_file, r.cert_file)")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, check=True)
    files = [Path(name) for name in done.stdout.split()]
    assert len(files) == 2
    assert not any(file.exists() for file in files)


class _NoOperator:
    def register(self, registry: Any) -> None:
        pass


def test_target_for_a_static_server_is_unchanged(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t1\n")
    target = KubeSection(server="https://h", token_file=token).target()
    assert target == KubeTarget("https://h", None, None, False, token_file=token)
    assert target.current_token() == "t1"


async def test_kopf_sends_the_plugin_token_and_logs_in_again_after_expiry(
        kube: RunningKubeEmulator, tmp_path: Path) -> None:
    """The real kopf, fed by the operator's login handler: its writes carry the plugin's token,
    and once that token has expired kopf logs in again and the plugin's next token is used."""
    widgets = "example.com/v1/widgets"
    kube.emulator.register_resource(widgets, kind="Widget", namespaced=True)
    (tmp_path / "plugin.py").write_text(PLUGIN)
    counter = tmp_path / "count"
    path = write_kubeconfig(tmp_path / "config", kube.url, {"exec": {
        "command": sys.executable, "args": ["plugin.py", str(counter), "2"],
        "env": [{"name": "TOKEN_PREFIX", "value": "kopf"}]}})
    target = KubeSection(kubeconfig=path).target()

    class Widgets:
        def register(self, registry: kopf.OperatorRegistry) -> None:
            @kopf.on.create("example.com", "v1", "widgets", registry=registry)
            def created(**_: Any) -> str:
                return "seen"

    def patches(name: str) -> list[str | None]:
        return [request.headers.get("Authorization") for request in kube.emulator._requests
                if str(request.method).upper().endswith("PATCH") and request.name == name]

    def widget(name: str) -> dict[str, Any]:
        return {"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": name, "namespace": NS}}

    async with embedded_kopf(build_registry(Widgets(), target)):  # type: ignore[arg-type]
        kube.emulator.create_object(widgets, widget("first"), namespace=NS)
        await kube.emulator.wait_until(lambda: patches("first"), timeout=20)
        _, expires = target.token_and_expiry()
        assert expires is not None
        await asyncio.sleep(max(0.0, expires.timestamp() - time.time()) + 0.5)
        kube.emulator.create_object(widgets, widget("second"), namespace=NS)
        await kube.emulator.wait_until(lambda: patches("second"), timeout=20)
    assert set(patches("first")) == {"Bearer kopf-1"}
    assert "Bearer kopf-1" not in patches("second")
    assert int(counter.read_text()) >= 2


async def test_client_certificate_and_ca_data_over_mutual_tls(tmp_path: Path) -> None:
    """A kubeconfig with ``certificate-authority-data`` and ``client-certificate-data``/
    ``client-key-data`` against a TLS server that requires a client certificate from its CA:
    the client verifies the server and the server sees the kubeconfig's user; the same
    kubeconfig without the client certificate is refused."""
    import ssl

    from harmony_fleet.localstack.tls import _cert_pem, _key_pem, issue_certificate, new_ca

    ca, ca_key = new_ca("kube test CA")
    server_cert, server_key = issue_certificate(ca, ca_key, "apiserver", ("127.0.0.1",))
    client_cert, client_key = issue_certificate(ca, ca_key, "fleet-operator", (), client=True)
    for name, pem in {"ca.pem": _cert_pem(ca), "server.pem": _cert_pem(server_cert),
                      "server-key.pem": _key_pem(server_key)}.items():
        (tmp_path / name).write_text(pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(str(tmp_path / "server.pem"), str(tmp_path / "server-key.pem"))
    context.verify_mode = ssl.CERT_REQUIRED

    async def whoami(request: aiohttp.web.Request) -> aiohttp.web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        return aiohttp.web.json_response({"user": subject.get("commonName")})

    app = aiohttp.web.Application()
    app.router.add_get("/whoami", whoami)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    def kubeconfig(user: dict[str, Any]) -> Path:
        path = tmp_path / "config"
        path.write_text(yaml.safe_dump({
            "current-context": "tls",
            "clusters": [{"name": "tls", "cluster": {
                "server": f"https://127.0.0.1:{port}",
                "certificate-authority-data": b64(_cert_pem(ca))}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "tls", "context": {"cluster": "tls", "user": "u"}}]}))
        return path

    try:
        with_cert = kubeconfig({"client-certificate-data": b64(_cert_pem(client_cert)),
                                "client-key-data": b64(_key_pem(client_key))})
        async with KubeClient(KubeSection(kubeconfig=with_cert).target()) as client:
            assert await client.get("/whoami") == {"user": "fleet-operator"}
        without = kubeconfig({"token": "not-a-certificate"})
        async with KubeClient(KubeSection(kubeconfig=without).target()) as client:
            with pytest.raises(KubeError) as failure:
                await client.get("/whoami", retry=False)
        assert failure.value.status == 0  # the handshake is refused: no HTTP answer at all
    finally:
        await runner.cleanup()
