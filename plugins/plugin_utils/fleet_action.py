# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE to the collection. Controller-side base for fleet action plugins (and the call the
lookup plugins share): argument spec, connection resolution (task args, then host vars, then
environment, then the connection file) and the call into harmony_fleet (through the shared
broker, or a connection of its own), with failures as the names of harmony_fleet's exception
classes."""

from __future__ import annotations

import traceback
from abc import abstractmethod

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

from ansible_collections.harmony.fleet.plugins.plugin_utils._harmony_fleet import (
    REQUIREMENTS_HINT,
    use_shipped_package,
)

use_shipped_package()
try:
    from harmony_fleet.bus.connection import ConnectError
    from harmony_fleet.bus.profile import ConnectionConfigError, resolve_settings
    from harmony_fleet.control import broker
    from harmony_fleet.control.operations import operation_errors
except ImportError:
    HARMONY_FLEET_IMPORT_ERROR = traceback.format_exc()
else:
    HARMONY_FLEET_IMPORT_ERROR = None

NATS_ARG_SPEC = dict(
    nats_url=dict(type="str"),
    nats_user=dict(type="str"),
    nats_password=dict(type="str", no_log=True),
    nats_token=dict(type="str", no_log=True),
    connection_file=dict(type="path"),
    nats_tls_ca_file=dict(type="path"),
    nats_tls_cert_file=dict(type="path"),
    nats_tls_key_file=dict(type="path"),
    timeout=dict(type="float", default=5.0),
    persistent=dict(type="bool", default=True),
)
NATS_MUTUALLY_EXCLUSIVE = [("nats_password", "nats_token")]
NATS_REQUIRED_TOGETHER = [("nats_tls_cert_file", "nats_tls_key_file")]

# task argument -> host variable consulted when the argument is not given
HOST_VARS = dict(
    nats_url="fleet_nats_url",
    nats_user="fleet_nats_user",
    nats_password="fleet_nats_password",
    nats_token="fleet_nats_token",
    connection_file="fleet_connection_file",
    nats_tls_ca_file="fleet_nats_tls_ca_file",
    nats_tls_cert_file="fleet_nats_tls_cert_file",
    nats_tls_key_file="fleet_nats_tls_key_file",
    persistent="fleet_nats_persistent",
)

# Seconds a broker call may take beyond what the operation itself waits for (spawning the
# broker, connecting and authenticating to NATS).
CALL_OVERHEAD_S = 30.0


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str) and value:
        yield value


def no_log_values(spec, args):
    """Every string inside the arguments whose spec says ``no_log`` (dict and list values too)."""
    return {leaf for name, options in spec.items() if options.get("no_log")
            for leaf in _leaves(args.get(name))}


class FleetCallError(Exception):
    """A fleet call failed. ``error`` is the name of the harmony_fleet exception class that
    says why (what a module returns as ``error``); ``kind`` the device's error kind with
    ``RemoteError``."""

    def __init__(self, error, message, kind=None):
        super().__init__(message)
        self.error = error
        self.kind = kind

    def result(self, **extra):
        """The failed task result for this error."""
        out = dict(failed=True, changed=False, error=self.error, msg=str(self))
        out.update(extra)
        if self.kind is not None:
            out["kind"] = self.kind
        return out


def error_name(exc):
    """The documented error name of a connection failure: a TLS failure (TlsError) is a
    ConnectError whose message says what TLS refused."""
    return ConnectError.__name__ if isinstance(exc, ConnectError) else type(exc).__name__


def plugin_errors():
    """What the plugin side itself reports: no connection settings, no NATS, no broker."""
    return [ConnectionConfigError.__name__, ConnectError.__name__, broker.BrokerError.__name__]


def nats_settings(options):
    """The NatsSettings for the NATS ``options`` (nats_url, nats_user, nats_password,
    nats_token, connection_file, nats_tls_*); FleetCallError if they cannot be assembled."""
    try:
        return resolve_settings(
            url=options.get("nats_url"),
            user=options.get("nats_user"),
            password=options.get("nats_password"),
            token=options.get("nats_token"),
            connection_file=options.get("connection_file"),
            tls_ca_file=options.get("nats_tls_ca_file"),
            tls_cert_file=options.get("nats_tls_cert_file"),
            tls_key_file=options.get("nats_tls_key_file"),
        )
    except ConnectionConfigError as exc:
        raise FleetCallError(type(exc).__name__, str(exc)) from exc


def run_operation(options, op, op_args, call_timeout):
    """Run a harmony_fleet operation with the NATS ``options`` (see nats_settings, and
    persistent); return its result or raise FleetCallError."""
    settings = nats_settings(options)
    try:
        if options.get("persistent", True):
            answer = broker.call(settings, op, op_args, timeout=call_timeout)
        else:
            answer = broker.call_direct(settings, op, op_args)
    except (broker.BrokerError, ConnectError) as exc:
        raise FleetCallError(error_name(exc), str(exc)) from exc
    if not answer.get("ok"):
        error = answer.get("error") or {}
        raise FleetCallError(error.get("type", broker.BrokerError.__name__),
                             error.get("message", "the broker gave no reason"), error.get("kind"))
    return answer["result"]


class FleetActionBase(ActionBase):
    """Subclasses set ARGUMENT_SPEC and OPERATIONS (the harmony_fleet operations they call) and
    implement ``run_fleet(args, task_vars)``."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False
    ARGUMENT_SPEC: dict = {}
    MUTUALLY_EXCLUSIVE: list = []
    REQUIRED_IF: list = []
    OPERATIONS: tuple = ()

    @classmethod
    def error_names(cls):
        """Every ``error`` the module can return: the plugin side's and its operations'."""
        names = set(plugin_errors())
        for op in cls.OPERATIONS:
            names.update(operation_errors(op))
        return sorted(names)

    def _host_var(self, task_vars, name):
        if name not in task_vars:
            return None
        return self._templar.template(task_vars[name])

    def _args(self, task_vars):
        spec = dict(NATS_ARG_SPEC)
        spec.update(self.ARGUMENT_SPEC)
        given = set(self._task.args)
        args = self.validate_argument_spec(
            argument_spec=spec,
            mutually_exclusive=NATS_MUTUALLY_EXCLUSIVE + list(self.MUTUALLY_EXCLUSIVE),
            required_if=list(self.REQUIRED_IF),
            required_together=NATS_REQUIRED_TOGETHER,
        )[1]
        # what AnsibleModule does for modules: values of no_log options never reach the result
        self._no_log_values = no_log_values(spec, args)
        for arg, var in HOST_VARS.items():
            if arg not in given:
                value = self._host_var(task_vars, var)
                if value is not None:
                    args[arg] = value
        return args

    def device_id(self, args, task_vars):
        """The device a per-host module acts on: its ``device_id`` option, else the host
        variable ``fleet_device_id``, else ``inventory_hostname``."""
        return (
            args["device_id"]
            or self._host_var(task_vars, "fleet_device_id")
            or task_vars.get("inventory_hostname")
        )

    def fleet_call(self, args, op, op_args, wait_s=0.0):
        """Run a harmony_fleet operation that may wait ``wait_s`` seconds beyond the NATS
        timeout; return its result or raise FleetCallError."""
        return run_operation(args, op, op_args, args["timeout"] + wait_s + CALL_OVERHEAD_S)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        if HARMONY_FLEET_IMPORT_ERROR:
            raise AnsibleActionFail(REQUIREMENTS_HINT,
                                    result=dict(exception=HARMONY_FLEET_IMPORT_ERROR))
        self._no_log_values = set()
        args = self._args(task_vars)
        result.update(self.run_fleet(args, task_vars))
        return remove_values(result, self._no_log_values) if self._no_log_values else result

    @abstractmethod
    def run_fleet(self, args, task_vars):
        """Do the module's work; return the result dict."""
