# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_ping: runs on the controller, never on the device."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetCallError,
)


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(device_id=dict(type="str"))
    OPERATIONS = ("ping",)

    def run_fleet(self, args, task_vars):
        device_id = self.device_id(args, task_vars)
        try:
            out = self.fleet_call(args, "ping", dict(device_id=device_id, timeout=args["timeout"]))
        except FleetCallError as exc:
            return exc.result(device_id=device_id)
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
