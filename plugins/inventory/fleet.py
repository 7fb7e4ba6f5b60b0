# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: Harmony Fleet devices as inventory hosts
version_added: 0.1.0
description:
  - Reads every device that published C(device-info) (its labels, inventory and agent
    version) and its C(device-heartbeat) from NATS, and makes one host per device id.
  - Hosts are in the group C(fleet) and in C(fleet_online) or C(fleet_offline).
  - Host variables C(fleet_device_id), C(fleet_labels), C(fleet_inventory),
    C(fleet_agent_version), C(fleet_runtime_enabled), C(fleet_online), C(fleet_last_seen).
  - Use C(keyed_groups) on C(fleet_labels) to group devices by label.
  - The inventory file name must end in C(fleet.yml) or C(fleet.yaml).
extends_documentation_fragment:
  - harmony.fleet.nats.plugin
  - constructed
options:
  plugin:
    description: Marks this file as a fleet inventory.
    required: true
    type: str
    choices: [harmony.fleet.fleet]
  offline_after:
    description: A device whose last heartbeat is older than this many seconds is offline.
    type: float
    default: 30
  online_only:
    description: Leave offline devices out.
    type: bool
    default: false
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
# inventories/prod/fleet.yml
plugin: harmony.fleet.fleet
connection_file: /etc/harmony-fleet/admin-connection.yml
keyed_groups:
  - key: fleet_labels
    prefix: label          # label_site_lab, label_role_sensor, ...
groups:
  pis: fleet_inventory.arch == 'aarch64'
compose:
  ansible_host: fleet_inventory.hostname
"""

import asyncio
import traceback
from datetime import timedelta

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.harmony.fleet.plugins.plugin_utils._harmony_fleet import (
    REQUIREMENTS_HINT,
    use_shipped_package,
)

use_shipped_package()
try:
    from harmony_fleet.bus import connect, drain
    from harmony_fleet.control.fleetview import read_fleet
    from harmony_fleet.bus.profile import ConnectionConfigError, resolve_settings
except ImportError:
    HARMONY_FLEET_IMPORT_ERROR = traceback.format_exc()
else:
    HARMONY_FLEET_IMPORT_ERROR = None


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "harmony.fleet.fleet"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("fleet.yml", "fleet.yaml"))

    def _read(self, settings, offline_after):
        async def run():
            nc = await connect(settings, name="fleet-inventory")
            try:
                return await read_fleet(nc.jetstream(), offline_after)
            finally:
                await drain(nc)

        return asyncio.run(run())

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if HARMONY_FLEET_IMPORT_ERROR:
            raise AnsibleParserError(REQUIREMENTS_HINT + ":\n" + HARMONY_FLEET_IMPORT_ERROR)
        self._read_config_data(path)
        try:
            settings = resolve_settings(
                url=self.get_option("nats_url"),
                user=self.get_option("nats_user"),
                password=self.get_option("nats_password"),
                token=self.get_option("nats_token"),
                connection_file=self.get_option("connection_file"),
                timeout=self.get_option("timeout"),
                tls_ca_file=self.get_option("nats_tls_ca_file"),
                tls_cert_file=self.get_option("nats_tls_cert_file"),
                tls_key_file=self.get_option("nats_tls_key_file"),
            )
            view = self._read(settings, timedelta(seconds=self.get_option("offline_after")))
        except ConnectionConfigError as exc:
            raise AnsibleParserError(f"fleet inventory: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise AnsibleParserError(
                f"fleet inventory: cannot read the fleet: {type(exc).__name__}: {exc}") from exc

        for problem in view.problems:
            self.display.warning(f"fleet inventory: skipped {problem}")
        strict = self.get_option("strict")
        for group in ("fleet", "fleet_online", "fleet_offline"):
            self.inventory.add_group(group)
        for device_id, device in sorted(view.devices.items()):
            if self.get_option("online_only") and not device.online:
                continue
            self.inventory.add_host(device_id, group="fleet")
            self.inventory.add_child("fleet_online" if device.online else "fleet_offline", device_id)
            info = device.info
            hostvars = dict(
                fleet_device_id=device_id,
                fleet_labels=dict(info.labels),
                fleet_inventory=info.inventory.model_dump(mode="json"),
                fleet_agent_version=info.agent_version,
                fleet_runtime_enabled=info.runtime_enabled,
                fleet_online=device.online,
                fleet_last_seen=device.last_seen.isoformat() if device.last_seen else None,
            )
            for name, value in hostvars.items():
                self.inventory.set_variable(device_id, name, value)
            self._set_composite_vars(self.get_option("compose"), hostvars, device_id, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, device_id, strict=strict)
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), hostvars, device_id, strict=strict
            )
