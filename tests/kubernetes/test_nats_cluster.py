"""The nats role's cluster mode (``nats_cluster_replicas: 3``): the member configurations come
from ``harmony_fleet.natsconf.cluster_configs`` through the filter ``nats_cluster_confs``;
nats-server accepts them, three real servers started from them form a cluster in which the
bucket Job's command creates the buckets with three replicas, and the role renders a
StatefulSet of three that Kubernetes' schemas accept. Two members (no majority) are refused."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harmony_fleet.callout.nkjwt import new_nkey, new_xkey

from .conftest import SiteEnv, free_port

BIN = Path(sys.executable).parent
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 - what a pod listens on
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _collection_loader() -> None:
    """Make ``ansible_collections.harmony.fleet`` importable from this checkout."""
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    _AnsibleCollectionFinder(paths=[str(REPO / ".collections")], scan_sys_paths=False)._install()


def _filters() -> Any:
    return importlib.import_module("ansible_collections.harmony.fleet.plugins.filter.server_side")


def _settings(tmp_path: Path, issuer: str, xkey: str, **over: Any) -> dict[str, Any]:
    return {"port": 4222, "http_port": 8222, "host": EVERY_ADDRESS, "server_name": "nats-0",
            "store_dir": str(tmp_path / "js"), "callout_password": "c-" + secrets.token_hex(8),
            "writer_password": "w", "sys_password": "s", "issuer_public_key": issuer,
            "xkey_public_key": xkey, "cluster_password": "r-" + secrets.token_hex(12), **over}


def _server_test(conf: str, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(conf)
    return subprocess.run([str(BIN / "nats-server"), "-t", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)


def test_the_statefulset_members_configs_pass_nats_server_t(tmp_path: Path) -> None:
    """What the role renders for pods nats-0..2: listen on every address, route to the others'
    DNS names under the headless Service; the same as cluster_configs gives."""
    from harmony_fleet.natsconf import ClusterMember, StaticUser, cluster_configs, render

    filters = _filters()
    values = _settings(tmp_path, new_nkey("account").public_key, new_xkey().public_key)
    members = [{"server_name": f"nats-{i}", "host": f"nats-{i}.nats-headless.fleet.svc"}
               for i in range(3)]
    confs = filters.nats_cluster_confs(values, members, 6222, "nats")
    assert sorted(confs) == ["nats-0", "nats-1", "nats-2"]
    base = filters._server_config(values)
    expected = cluster_configs(base, [
        ClusterMember(f"nats-{i}", f"nats-{i}.nats-headless.fleet.svc", 4222, 6222,
                      tmp_path / "js" / f"nats-{i}", 8222, listen_host=EVERY_ADDRESS)
        for i in range(3)], "nats", StaticUser("route", values["cluster_password"]))
    assert [confs[f"nats-{i}"] for i in range(3)] == [render(c) for c in expected]
    for i in range(3):
        conf = confs[f"nats-{i}"]
        assert f'server_name: "nats-{i}"' in conf
        assert 'listen: "0.0.0.0:6222"' in conf
        cred = f"route:{values['cluster_password']}@"
        others = [f'"nats-route://{cred}nats-{j}.nats-headless.fleet.svc:6222"'
                  for j in range(3) if j != i]
        assert f"routes: [{', '.join(others)}]" in conf
        assert f'authorization {{user: "route", password: "{values["cluster_password"]}"}}' \
            in conf
        tested = _server_test(conf, tmp_path / f"nats-{i}.conf")
        assert tested.returncode == 0, tested.stderr


@pytest.mark.parametrize(("members", "message"), [
    ([{"server_name": "nats-0", "host": "a"}], "at least two members"),
    ([{"server_name": "nats-0", "host": "a"}, {"server_name": "nats-0", "host": "b"}],
     "server name"),
    ([{"server_name": "nats-0", "host": "a", "zone": "x"}], "unknown member settings: zone"),
    ([{"server_name": "nats-0"}], "needs a server_name and a host"),
    ("nats-0", "list of members"),
    ([{"server_name": "nats-0", "host": "a"}, {"server_name": "nats-1", "host": "b"}],
     "missing settings: cluster_password"),
    ({"nats-0": "a"}, "at least two members"),
])
def test_members_that_cannot_form_a_cluster_are_refused(tmp_path: Path, members: Any,
                                                        message: str) -> None:
    from ansible.errors import AnsibleFilterError

    values = _settings(tmp_path, new_nkey("account").public_key, new_xkey().public_key)
    if "cluster_password" in message:
        values.pop("cluster_password")
    with pytest.raises(AnsibleFilterError, match=message):
        _filters().nats_cluster_confs(values, members, 6222)


class _AdminToken:
    """The identity provider's part, for one token: the callout service (its real request
    decoding, signing and sealing) gives its holder the fleet-admin role."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def validate(self, token: str) -> Any:
        from harmony_fleet.callout.oidc import Identity, TokenRejected
        from harmony_fleet.contracts.identity import ADMIN_ROLE

        if not secrets.compare_digest(token, self.token):
            raise TokenRejected("invalid", "not the test's token")
        return Identity("ansible", None, frozenset({ADMIN_ROLE}), int(time.time()) + 600,
                        "ansible")


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.fixture
def three_servers(tmp_path: Path) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], Any, Any]]:
    """Three nats-servers from the filter's member configs: every member on 127.0.0.1 with its
    own ports (where the role's members differ by DNS name); TLS on the client port and on the
    routes, with a lab certificate for client and server use (as the role generates)."""
    from harmony_fleet.localstack.tls import make_lab_pki

    pki = make_lab_pki(tmp_path / "pki", route=True)
    issuer, xkey = new_nkey("account"), new_xkey()
    values = _settings(tmp_path, issuer.public_key, xkey.public_key, host="127.0.0.1",
                       tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file),
                       tls_ca_file=str(pki.ca_file), cluster_tls=True)
    members = [{"server_name": f"nats-cluster-role-{i}", "host": "127.0.0.1", "port": free_port(),
                "cluster_port": free_port(), "http_port": free_port()} for i in range(3)]
    confs = _filters().nats_cluster_confs(values, members, 6222, "nats-cluster-role")
    procs = []
    try:
        for member in members:
            path = tmp_path / f"{member['server_name']}.conf"
            path.write_text(confs[member["server_name"]])
            log = (tmp_path / f"{member['server_name']}.log").open("w")
            procs.append(subprocess.Popen([str(BIN / "nats-server"), "-c", str(path)],
                                          stdout=log, stderr=subprocess.STDOUT))
        yield values, members, issuer, xkey
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _an_intruder_route_is_refused(members: list[dict[str, Any]], values: dict[str, Any],
                                  tmp_path: Path) -> None:
    """The attack: a server of its own that reaches the route port (any pod in the cluster
    can) routes to member 0 - with a certificate of the cluster's CA but without the password,
    or with a wrong one; without TLS; with the right password but a certificate of another CA.
    Routes see every account: let in, it would bypass the auth callout."""
    from harmony_fleet.localstack.tls import make_lab_pki
    from harmony_fleet.natsconf import ClusterConfig, ServerConfig, StaticUser, TlsConfig, render

    ours = TlsConfig(Path(values["tls_cert_file"]), Path(values["tls_key_file"]),
                     Path(values["tls_ca_file"]))
    foreign_pki = make_lab_pki(tmp_path / "foreign-pki", route=True)
    foreign = TlsConfig(foreign_pki.cert_file, foreign_pki.key_file, foreign_pki.ca_file)
    right = StaticUser("route", values["cluster_password"])
    for name, user, tls, refusal in (
            ("intruder-none", None, ours, "authorization violation"),
            ("intruder-wrong", StaticUser("route", "guess"), ours, "authorization violation"),
            # member 0 says it: no TLS handshake at all
            ("intruder-plain", right, None, "first record does not look like a tls handshake"),
            # the intruder says it: member 0's certificate is not of its CA (and member 0
            # refuses the intruder's certificate alike: "bad certificate")
            ("intruder-foreign-ca", right, foreign, "certificate signed by unknown authority")):
        conf = tmp_path / f"{name}.conf"
        conf.write_text(render(ServerConfig(
            port=free_port(), store_dir=tmp_path / name, server_name=name,
            cluster=ClusterConfig("nats-cluster-role", free_port(), route_user=user, tls=tls,
                                  routes=(f"127.0.0.1:{members[0]['cluster_port']}",)))))
        log = tmp_path / f"{name}.log"
        member_log = tmp_path / f"{members[0]['server_name']}.log"
        seen = len(member_log.read_text())
        with log.open("w") as out:
            proc = subprocess.Popen([str(BIN / "nats-server"), "-DV", "-c", str(conf)],
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            # the refusal, in the intruder's log or in member 0's (a TLS failure is said there)
            while refusal not in (log.read_text() + member_log.read_text()[seen:]).lower():
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        for member in members:
            peers = {r["remote_name"] for r in _get_json(
                f"http://127.0.0.1:{member['http_port']}/routez")["routes"] or []}
            assert name not in peers


def test_three_servers_from_the_rendered_configs_cluster_and_the_buckets_get_three_replicas(
        three_servers: tuple[dict[str, Any], list[dict[str, Any]], Any, Any],
        tmp_path: Path) -> None:
    values, members, issuer, xkey = three_servers
    deadline = time.monotonic() + 30
    while True:  # routes up and a JetStream meta leader elected, on every member
        try:
            # (route pooling: several connections per peer) the peers each member routes to
            routes = [sorted({r["remote_name"] for r in _get_json(
                f"http://127.0.0.1:{m['http_port']}/routez")["routes"] or []}) for m in members]
            healthy = [_get_json(f"http://127.0.0.1:{m['http_port']}/healthz").get("status")
                       for m in members]
        except OSError:
            routes, healthy = [], []
        names = sorted(m["server_name"] for m in members)
        if routes == [[n for n in names if n != m["server_name"]] for m in members] \
                and healthy == ["ok"] * 3:
            break
        assert time.monotonic() < deadline, f"no cluster: routes {routes}, health {healthy}"
        time.sleep(0.3)
    jsz = _get_json(f"http://127.0.0.1:{members[0]['http_port']}/jsz")
    assert jsz["meta_cluster"]["cluster_size"] == 3, jsz["meta_cluster"]
    for member in members:  # routes: TLS required, certificates verified both ways
        cluster = _get_json(f"http://127.0.0.1:{member['http_port']}/varz")["cluster"]
        assert cluster.get("tls_required") is True, cluster
        assert cluster.get("tls_verify") is True, cluster
    _an_intruder_route_is_refused(members, values, tmp_path)

    token = secrets.token_urlsafe(24)
    smoke = tmp_path / "smoke.toml"
    smoke.write_text(
        "[nats]\n"
        f"urls = [\"tls://127.0.0.1:{members[2]['port']}\"]\n"
        f"tls_ca_file = \"{values['tls_ca_file']}\"\n"
        f"auth = {{ mode = \"token\", token = \"{token}\" }}\n")
    smoke.chmod(0o600)

    async def scenario() -> dict[str, Any]:
        # the callout answers on member 0; the admin connects to member 2 (the request
        # crosses the routes)
        import ssl

        import nats

        from harmony_fleet.callout.service import CalloutService

        context = ssl.create_default_context(cafile=values["tls_ca_file"])
        callout_nc = await nats.connect(f"tls://127.0.0.1:{members[0]['port']}", tls=context,
                                        user="callout", password=values["callout_password"])
        service = CalloutService(callout_nc, issuer, _AdminToken(token),  # type: ignore[arg-type]
                                 xkey=xkey)
        await service.start()
        try:
            # the command the role's bucket Job runs
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "fleet"), "smoke", "jetstream", "--ensure-buckets", "--replicas", "3",
                "--config", str(smoke), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()[-3000:]
            return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]
        finally:
            await service.stop()
            await callout_nc.close()

    result = asyncio.run(scenario())
    from harmony_fleet.contracts.kv import BUCKETS, kv_stream_name

    assert sorted(result["buckets"]) == sorted(b.name for b in BUCKETS)
    # every member's monitoring lists every bucket's stream, with three replicas: one each
    for member in members:
        jsz = _get_json(f"http://127.0.0.1:{member['http_port']}/jsz?accounts=true"
                        "&streams=true&config=true")
        streams = {s["name"]: s for a in jsz["account_details"]
                   for s in a.get("stream_detail") or []}
        for spec in BUCKETS:
            stream = streams[kv_stream_name(spec.name)]
            assert stream["config"]["num_replicas"] == 3, stream["config"]
            assert stream["cluster"]["leader"] in {m["server_name"] for m in members}


def test_the_role_with_three_replicas_renders_a_valid_statefulset_of_three(
        site_env: SiteEnv, tmp_path: Path) -> None:
    namespace = "fleet-nats-cluster-role"
    route_password = secrets.token_urlsafe(24)
    result = site_env.playbook("--tags", "nats", extra={
        "harmony_fleet_namespace": namespace, "nats_namespace": namespace,
        "nats_cluster_replicas": 3, "nats_cluster_password": route_password,
        "nats_cluster_tls": True})
    assert result.returncode == 0, result.stdout[-4000:]
    assert route_password not in result.stdout, "the route password was shown"
    emulator = site_env.emulator
    statefulset = emulator.get_object("apps/v1/statefulsets", "nats", namespace=namespace)
    headless = emulator.get_object("v1/services", "nats-headless", namespace=namespace)
    budget = emulator.get_object("policy/v1/poddisruptionbudgets", "nats", namespace=namespace)
    config = emulator.get_object("v1/secrets", "nats-config", namespace=namespace)
    for obj in (statefulset, headless, budget, config):
        assert obj is not None, result.stdout[-6000:]
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--config", "/etc/nats/$(POD_NAME).conf"]
    assert {"name": "cluster", "containerPort": 6222} in container["ports"]
    assert {"name": "cluster", "port": 6222, "targetPort": "cluster"} in headless["spec"]["ports"]
    assert budget["spec"]["maxUnavailable"] == 1
    files = config.get("stringData") or {
        k: base64.b64decode(v).decode() for k, v in config["data"].items()}
    assert sorted(files) == ["nats-0.conf", "nats-1.conf", "nats-2.conf"]
    # the generated certificate (the session's variables ask for one) serves the routes: it
    # names every member under the headless Service, for client and server use
    from cryptography import x509

    tls = emulator.get_object("v1/secrets", "nats-tls", namespace=namespace)
    assert tls is not None
    tls_files = tls.get("stringData") or {
        k: base64.b64decode(v).decode() for k, v in tls["data"].items()}
    cert = x509.load_pem_x509_certificate(tls_files["tls.crt"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"*.nats-headless.{namespace}.svc" in names.get_values_for_type(x509.DNSName)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name, text in tls_files.items():
        (tls_dir / name).write_text(text)
    for i in range(3):
        conf = files[f"nats-{i}.conf"]
        assert f'server_name: "nats-{i}"' in conf
        assert f"nats-route://route:{route_password}@nats-{(i + 1) % 3}.nats-headless." \
            f"{namespace}.svc:6222" in conf
        cluster = conf[conf.index("\ncluster {"):]
        assert '    ca_file: "/etc/nats-tls/ca.crt"' in cluster  # routes: TLS, verified
        tested = _server_test(conf.replace("/etc/nats-tls/", f"{tls_dir}/"),
                              tmp_path / f"nats-{i}.conf")
        assert tested.returncode == 0, tested.stderr

    docs = []
    for obj in (statefulset, headless, budget):
        clean = {k: v for k, v in obj.items() if k != "status"}
        clean["metadata"] = {k: v for k, v in obj["metadata"].items()
                             if k in ("name", "namespace", "labels", "annotations")}
        docs.append(clean)
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    validate = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.31",
         str(manifest)], capture_output=True, text=True, timeout=120, check=False)
    assert validate.returncode == 0, validate.stdout[-4000:] + validate.stderr[-2000:]
    assert validate.stdout.count(" passed for resource ") == len(docs), validate.stdout[-3000:]


@pytest.mark.parametrize("extra", [
    {"nats_cluster_replicas": 2, "nats_cluster_password": "p" * 24},
    {"nats_cluster_replicas": 3}])  # no route password
def test_two_replicas_or_unauthenticated_routes_are_refused_in_preflight(
        site_env: SiteEnv, extra: dict[str, Any]) -> None:
    writes = len(site_env.emulator.write_log)
    result = site_env.playbook("--tags", "nats", extra=extra)
    assert result.returncode != 0
    assert "nats_cluster_replicas must be 1, 3 or 5" in result.stdout, result.stdout[-3000:]
    failed = "nats_cluster_replicas | int in [1, 3, 5]" if extra["nats_cluster_replicas"] == 2 \
        else "nats_cluster_password | length >= 16"
    assert failed in result.stdout, result.stdout[-3000:]
    later = site_env.emulator.write_log[writes:]
    assert all(w.resource is not None and w.resource.plural == "namespaces" for w in later), \
        "the role wrote before its preflight"
