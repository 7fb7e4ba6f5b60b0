# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_device_revoke: revoke a device (refused by the auth
callout, its live connections closed through the NATS system account) or allow it again.

It opens connections of its own (the FLEET admin connection and, to revoke, the system
account's): revocations are rare, and the shared broker holds one connection only."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    HARMONY_FLEET_IMPORT_ERROR,
    FleetActionBase,
    FleetCallError,
    error_name,
    nats_settings,
    plugin_errors,
)

if not HARMONY_FLEET_IMPORT_ERROR:
    from harmony_fleet.bus.connection import ConnectError
    from harmony_fleet.bus.profile import ConnectionConfigError, resolve_system_settings
    from harmony_fleet.control.revocation import REVOCATION_ERRORS, set_device_revocation
    from harmony_fleet.errors import FleetError, InternalError, InvalidInput

# task argument -> host variable consulted when the argument is not given
SYSTEM_HOST_VARS = dict(
    nats_system_user="fleet_nats_system_user",
    nats_system_password="fleet_nats_system_password",
    system_connection_file="fleet_system_connection_file",
)


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        device_id=dict(type="str", required=True),
        state=dict(type="str", default="revoked", choices=["revoked", "allowed"]),
        reason=dict(type="str", default=""),
        nats_system_user=dict(type="str"),
        nats_system_password=dict(type="str", no_log=True),
        system_connection_file=dict(type="path"),
    )

    @classmethod
    def error_names(cls):
        names = set(plugin_errors())
        names.update(c.__name__ for c in (InvalidInput, InternalError, *REVOCATION_ERRORS))
        return sorted(names)

    def _system_settings(self, args, fleet, task_vars):
        for arg, var in SYSTEM_HOST_VARS.items():
            if args.get(arg) is None:
                args[arg] = self._host_var(task_vars, var)
        if args["nats_system_password"]:
            self._no_log_values.add(args["nats_system_password"])
        try:
            return resolve_system_settings(
                fleet, user=args["nats_system_user"], password=args["nats_system_password"],
                connection_file=args["system_connection_file"] or args["connection_file"])
        except ConnectionConfigError as exc:
            raise FleetCallError(type(exc).__name__, str(exc)) from exc

    def run_fleet(self, args, task_vars):
        device_id = args["device_id"]
        state = args["state"]
        try:
            fleet = nats_settings(args)
            system = self._system_settings(args, fleet, task_vars) if state == "revoked" else None
            out = self._call(fleet, system, args)
        except FleetCallError as exc:
            return exc.result(device_id=device_id, kicked=0)
        result = dict(changed=out["changed"], device_id=out["device_id"], state=state,
                      kicked=out["kicked"], was_revoked=out["was_revoked"])
        if self._task.diff:
            before = "revoked" if out["was_revoked"] else "allowed"
            result["diff"] = dict(before=dict(device_id=device_id, state=before),
                                  after=dict(device_id=device_id, state=state))
        return result

    def _call(self, fleet, system, args):
        try:
            return set_device_revocation(
                fleet, system, args["device_id"], args["state"], reason=args["reason"],
                revoked_by="ansible fleet_device_revoke",
                check_mode=bool(self._task.check_mode))
        except ConnectError as exc:
            raise FleetCallError(error_name(exc), str(exc)) from exc
        except REVOCATION_ERRORS as exc:
            raise FleetCallError(type(exc).__name__, str(exc)) from exc
        except (InvalidInput, ValueError) as exc:  # a device id that is not an id
            raise FleetCallError(InvalidInput.__name__, str(exc)) from exc
        except FleetError as exc:
            raise FleetCallError(InternalError.__name__, f"{type(exc).__name__}: {exc}") from exc
