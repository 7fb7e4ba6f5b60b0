# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_device_info: what the fleet knows about a device."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetCallError,
)


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        device_id=dict(type="str"),
        # None: harmony_fleet.contracts.DEFAULT_OFFLINE_AFTER_S, the documented default
        offline_after=dict(type="float"),
    )
    OPERATIONS = ("device_info",)

    def run_fleet(self, args, task_vars):
        device_id = self.device_id(args, task_vars)
        try:
            op_args = dict(device_id=device_id)
            if args["offline_after"] is not None:
                op_args["offline_after"] = args["offline_after"]
            out = self.fleet_call(args, "device_info", op_args)
        except FleetCallError as exc:
            return exc.result(device_id=device_id)
        return dict(out, changed=False)
