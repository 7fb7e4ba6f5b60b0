# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_ping: runs on the controller, never on the device."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetError,
)


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(device_id=dict(type="str"))

    def run_fleet(self, args, task_vars):
        device_id = (
            args["device_id"]
            or self._host_var(task_vars, "fleet_device_id")
            or task_vars.get("inventory_hostname")
        )
        try:
            out = self.fleet_call(
                args, "ping", dict(device_id=device_id, timeout=args["timeout"])
            )
        except FleetError as exc:
            return dict(failed=True, changed=False, device_id=device_id, error=exc.type,
                        msg=str(exc))
        reply = out["reply"]
        return dict(
            changed=False,
            ping="pong",
            device_id=reply["device_id"],
            agent_version=reply["agent_version"],
            uptime_s=reply["uptime_s"],
            reply=reply,
            latency_ms=out["latency_ms"],
        )
