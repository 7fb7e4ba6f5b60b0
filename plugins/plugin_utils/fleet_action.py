# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side base for fleet action plugins: argument spec, connection resolution
(task args, then host vars, then environment, then the connection file) and the call into
harmony_fleet (through the shared broker, or a connection of its own)."""

from __future__ import annotations

import traceback
from abc import abstractmethod

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from harmony_fleet.bus import broker
    from harmony_fleet.bus.profile import ConnectionConfigError, resolve_settings
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
    timeout=dict(type="float", default=5.0),
    persistent=dict(type="bool", default=True),
)
NATS_MUTUALLY_EXCLUSIVE = [("nats_password", "nats_token")]

# task argument -> host variable consulted when the argument is not given
HOST_VARS = dict(
    nats_url="fleet_nats_url",
    nats_user="fleet_nats_user",
    nats_password="fleet_nats_password",
    nats_token="fleet_nats_token",
    connection_file="fleet_connection_file",
    persistent="fleet_nats_persistent",
)


class FleetError(Exception):
    """A fleet call failed; ``type`` is the typed error name (DeviceOffline, Timeout, ...)."""

    def __init__(self, type_, message, kind=None):
        super().__init__(message)
        self.type = type_
        self.kind = kind


class FleetActionBase(ActionBase):
    """Subclasses set ARGUMENT_SPEC and implement ``run_fleet(args, task_vars)``."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False
    ARGUMENT_SPEC: dict = {}
    MUTUALLY_EXCLUSIVE: list = []
    REQUIRED_IF: list = []

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
        )[1]
        for arg, var in HOST_VARS.items():
            if arg not in given:
                value = self._host_var(task_vars, var)
                if value is not None:
                    args[arg] = value
        return args

    def fleet_call(self, args, op, op_args, call_timeout=None):
        """Run a harmony_fleet operation; return its result or raise FleetError."""
        try:
            settings = resolve_settings(
                url=args["nats_url"],
                user=args["nats_user"],
                password=args["nats_password"],
                token=args["nats_token"],
                connection_file=args["connection_file"],
            )
        except (ConnectionConfigError, ValueError) as exc:
            raise FleetError("ConnectionConfig", str(exc)) from exc
        try:
            if args["persistent"]:
                answer = broker.call(settings, op, op_args,
                                     timeout=call_timeout or args["timeout"] + 30)
            else:
                answer = broker.call_direct(settings, op, op_args)
        except broker.BrokerError as exc:
            raise FleetError(exc.type, str(exc)) from exc
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise FleetError(error.get("type", "Error"), error.get("message", "unknown error"),
                             error.get("kind"))
        return answer["result"]

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        if HARMONY_FLEET_IMPORT_ERROR:
            raise AnsibleActionFail(
                "the harmony_fleet Python package is required on the controller "
                "(pip install harmony-fleet)",
                result=dict(exception=HARMONY_FLEET_IMPORT_ERROR),
            )
        args = self._args(task_vars)
        result.update(self.run_fleet(args, task_vars))
        return result

    @abstractmethod
    def run_fleet(self, args, task_vars):
        """Do the module's work; return the result dict."""
