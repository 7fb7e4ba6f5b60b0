# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the server-side roles render with: the nats-server configuration (through
harmony_fleet.natsconf, the generator the local stack uses too) and manifests moved into the
namespace a user chose."""

from __future__ import annotations

import copy

from ansible.errors import AnsibleFilterError

from ansible_collections.harmony.fleet.plugins.plugin_utils._harmony_fleet import use_shipped_package

_SERVER_KEYS = frozenset({
    "port", "http_port", "host", "store_dir", "server_name", "max_file_store", "max_memory_store",
    "max_payload", "callout_password", "writer_password", "sys_password", "issuer_public_key",
    "xkey_public_key", "callout_timeout_s", "tls_cert_file", "tls_key_file", "tls_ca_file",
    "tls_verify", "cluster_password", "cluster_tls", "websocket_port", "websocket_no_tls",
})
_REQUIRED = ("port", "store_dir", "callout_password", "writer_password", "sys_password",
             "issuer_public_key")


def nats_server_conf(values):
    """Render nats.conf for the cluster (auth callout mode) from a dict of settings.

    Static users: ``callout`` (account AUTH, answers the callout), ``writer`` (account FLEET, the
    report writer's permissions from harmony_fleet.callout.permissions) and ``sys``; every other
    connection is decided by fleet-callout.
    """
    from harmony_fleet.natsconf import render

    return render(_server_config(values))


_MEMBER_KEYS = frozenset({"server_name", "host", "port", "cluster_port", "http_port"})


def nats_cluster_confs(values, members, cluster_port, cluster_name="fleet"):
    """Each cluster member's nats.conf, by server name, from ``harmony_fleet.natsconf.
    cluster_configs`` (the generator of the local stack's ``--cluster``).

    ``values`` are nats_server_conf's settings (its ``host`` is where every member listens);
    ``members`` a list of dicts: ``server_name`` and ``host`` (the name the other members route
    to), optionally their own ``port``, ``cluster_port`` and ``http_port``; or a dict of server
    name to host. Each member's JetStream store is ``store_dir/<server_name>``. The setting
    ``cluster_password`` (required here, ignored by nats_server_conf) is the password of the
    route user ``route``: members accept only routes presenting it.
    """
    if isinstance(members, dict):
        members = [{"server_name": name, "host": host} for name, host in members.items()]
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise AnsibleFilterError("nats_cluster_confs expects a list of members (dicts)")
    for member in members:
        unknown = sorted(set(member) - _MEMBER_KEYS)
        if unknown:
            raise AnsibleFilterError("nats_cluster_confs: unknown member settings: %s"
                                     % ", ".join(unknown))
        if not member.get("server_name") or not member.get("host"):
            raise AnsibleFilterError("nats_cluster_confs: every member needs a server_name "
                                     "and a host")
    if not values.get("cluster_password"):
        raise AnsibleFilterError("nats_cluster_confs: missing settings: cluster_password "
                                 "(routes are authenticated)")
    base = _server_config(values)
    from pathlib import Path

    from harmony_fleet.natsconf import ClusterMember, StaticUser, TlsConfig, cluster_configs, render

    route_tls = None
    if _true(values.get("cluster_tls")):
        if base.tls is None or base.tls.ca_file is None:
            raise AnsibleFilterError("nats_cluster_confs: cluster_tls needs tls_cert_file, "
                                     "tls_key_file and tls_ca_file (the CA that signs every "
                                     "member's certificate)")
        route_tls = TlsConfig(base.tls.cert_file, base.tls.key_file, base.tls.ca_file)

    try:
        cluster = [
            ClusterMember(
                server_name=str(m["server_name"]), host=str(m["host"]),
                port=int(m.get("port") or base.port),
                cluster_port=int(m.get("cluster_port") or cluster_port),
                store_dir=Path(str(base.store_dir)) / str(m["server_name"]),
                http_port=int(m["http_port"]) if m.get("http_port") else base.http_port,
                listen_host=base.host)
            for m in members]
        configs = cluster_configs(base, cluster, str(cluster_name),
                                  StaticUser("route", str(values["cluster_password"])),
                                  route_tls)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("nats_cluster_confs: %s" % exc) from exc
    return {m.server_name: render(c) for m, c in zip(cluster, configs, strict=True)}


def _server_config(values):
    """The ServerConfig of nats_server_conf's settings."""
    if not isinstance(values, dict):
        raise AnsibleFilterError("nats_server_conf expects a dict of settings")
    unknown = sorted(set(values) - _SERVER_KEYS)
    if unknown:
        raise AnsibleFilterError("nats_server_conf: unknown settings: %s" % ", ".join(unknown))
    missing = [key for key in _REQUIRED if not values.get(key)]
    if missing:
        raise AnsibleFilterError("nats_server_conf: missing settings: %s" % ", ".join(missing))
    use_shipped_package()
    try:
        from pathlib import Path

        from harmony_fleet.callout.permissions import writer_permissions
        from harmony_fleet.natsconf import (
            CalloutConfig, ServerConfig, StaticUser, TlsConfig, WebsocketConfig)
    except ImportError as exc:
        raise AnsibleFilterError("nats_server_conf needs the harmony_fleet package's "
                                 "requirements on the controller: %s" % exc) from exc
    perms = writer_permissions()
    writer = StaticUser("writer", str(values["writer_password"]),
                        {"publish": perms["publish"], "subscribe": perms["subscribe"]})
    optional = {key: values[key] for key in ("http_port", "host", "server_name", "max_file_store",
                                             "max_memory_store", "max_payload") if key in values}
    if "http_port" in optional:
        optional["http_port"] = int(optional["http_port"])
    if "max_payload" in optional:
        optional["max_payload"] = int(optional["max_payload"])
    if values.get("tls_cert_file"):
        try:
            optional["tls"] = TlsConfig(
                cert_file=Path(str(values["tls_cert_file"])),
                key_file=Path(str(values.get("tls_key_file") or "")),
                ca_file=Path(str(values["tls_ca_file"])) if values.get("tls_ca_file") else None,
                verify=_true(values.get("tls_verify")))
        except ValueError as exc:
            raise AnsibleFilterError("nats_server_conf: %s" % exc) from exc
    if values.get("websocket_port") and int(values["websocket_port"]):
        tls = optional.get("tls")
        try:
            # the client port's certificate (wss://), or plain ws:// when asked for (a lab)
            optional["websocket"] = WebsocketConfig(
                port=int(values["websocket_port"]),
                no_tls=_true(values.get("websocket_no_tls")),
                tls=None if _true(values.get("websocket_no_tls")) or tls is None else
                TlsConfig(tls.cert_file, tls.key_file))
        except ValueError as exc:
            raise AnsibleFilterError("nats_server_conf: %s (tls_cert_file or websocket_no_tls)"
                                     % exc) from exc
    return ServerConfig(
        port=int(values["port"]), store_dir=Path(str(values["store_dir"])),
        fleet_users=[writer], sys_user=StaticUser("sys", str(values["sys_password"])),
        callout=CalloutConfig(
            issuer_public_key=str(values["issuer_public_key"]),
            callout_users=[StaticUser("callout", str(values["callout_password"]))],
            xkey_public_key=str(values["xkey_public_key"]) if values.get("xkey_public_key") else None,
            timeout_s=float(values.get("callout_timeout_s", 2.0))),
        **optional)


def _true(value):
    """A boolean setting as Ansible templates it (True, "True", "true", "yes", 1)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return bool(value)


def nats_lab_pki(existing, sans, lifetime_days=90):
    """A lab CA and a certificate for nats-server naming exactly ``sans`` (client port,
    WebSocket and routes: it serves for client and server use), as a dict of PEM text
    ``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``, plus ``renewed`` (why anything was
    made; empty when ``existing`` was kept).

    ``existing`` is the same dict as it was kept (e.g. read back from the Secrets): kept
    unless a part is missing, unreadable, not signed by the CA, names other hosts or is within
    a third of its lifetime of expiring (``harmony_fleet.localstack.tls.lab_pki_pems``).
    """
    if existing is None:
        existing = {}
    if not isinstance(existing, dict) or not isinstance(sans, list):
        raise AnsibleFilterError("nats_lab_pki expects a dict of PEM text and a list of names")
    use_shipped_package()
    try:
        import datetime

        from harmony_fleet.localstack.tls import TlsSetupError, lab_pki_pems
    except ImportError as exc:
        raise AnsibleFilterError("nats_lab_pki needs the harmony_fleet package's requirements "
                                 "(cryptography) on the controller: %s" % exc) from exc
    try:
        pems, reasons = lab_pki_pems({str(k): str(v) for k, v in existing.items()},
                                     [str(name) for name in sans],
                                     lifetime=datetime.timedelta(days=int(lifetime_days)))
    except (TlsSetupError, ValueError) as exc:
        raise AnsibleFilterError("nats_lab_pki: %s" % exc) from exc
    return dict(pems, renewed=reasons)


_CLUSTER_KINDS = frozenset({"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                            "Namespace"})


def in_namespace(manifests, namespace):
    """Put namespaced manifests (a list, or a ``kind: List``) and the ServiceAccount subjects
    of bindings into ``namespace``; cluster-scoped objects keep no namespace."""
    if isinstance(manifests, dict) and manifests.get("kind") == "List":
        manifests = manifests.get("items") or []
    if not isinstance(manifests, list):
        raise AnsibleFilterError("in_namespace expects a list of manifests or a List")
    moved = []
    for manifest in manifests:
        item = copy.deepcopy(manifest)
        meta = item.setdefault("metadata", {})
        if item.get("kind") in _CLUSTER_KINDS:
            meta.pop("namespace", None)
        else:
            meta["namespace"] = namespace
        for subject in item.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
        moved.append(item)
    return moved


class FilterModule(object):
    """The harmony.fleet server-side filters."""

    def filters(self):
        return {"nats_server_conf": nats_server_conf, "nats_cluster_confs": nats_cluster_confs,
                "nats_lab_pki": nats_lab_pki, "in_namespace": in_namespace}
