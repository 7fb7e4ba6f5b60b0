# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How fleet modules and plugins reach NATS."""

    # For modules (action plugins running on the controller).
    DOCUMENTATION = r"""
options:
  nats_url:
    description:
      - NATS server URL(s), comma-separated, for example C(nats://nats.example.net:4222).
      - When omitted, the host variable C(fleet_nats_url), then the environment variable
        E(FLEET_NATS_URL), then the connection file are used.
    type: str
  nats_user:
    description:
      - NATS user name (shared user/password credentials, development only).
      - Falls back to C(fleet_nats_user), then E(FLEET_NATS_USER).
    type: str
  nats_password:
    description:
      - Password for O(nats_user). Never logged.
      - Falls back to C(fleet_nats_password), then E(FLEET_NATS_PASSWORD).
    type: str
  nats_token:
    description:
      - Bearer token (for example a Zitadel access token checked by the auth callout).
        Never logged. Mutually exclusive with O(nats_password).
      - Falls back to C(fleet_nats_token), then E(FLEET_NATS_TOKEN).
    type: str
  connection_file:
    description:
      - JSON or YAML file holding the connection (C(urls) and C(auth)), at the top level or
        under a C(connection) key, such as the state file written by C(fleet stack up).
      - Falls back to C(fleet_connection_file), then E(FLEET_CONNECTION_FILE), then the local
        stack's state file (C($FLEET_STATE_DIR/stack.json), by default
        C(~/.local/state/harmony-fleet/stack.json)) when it exists.
    type: path
  timeout:
    description:
      - Seconds to wait for a device's answer.
    type: float
    default: 5
  persistent:
    description:
      - Share one NATS connection between all hosts and tasks of a run through a small
        per-user broker process (Unix socket, mode 0600) that exits after 30 idle seconds.
      - When false, every host opens and closes a connection of its own.
      - Falls back to C(fleet_nats_persistent).
    type: bool
    default: true
requirements:
  - The C(harmony_fleet) Python package on the controller (C(pip install harmony-fleet)).
"""

    # For inventory and lookup plugins, which accept env and vars sources.
    PLUGIN = r"""
options:
  nats_url:
    description: NATS server URL(s), comma-separated.
    type: str
    env:
      - name: FLEET_NATS_URL
  nats_user:
    description: NATS user name (shared user/password credentials, development only).
    type: str
    env:
      - name: FLEET_NATS_USER
  nats_password:
    description: Password for O(nats_user).
    type: str
    env:
      - name: FLEET_NATS_PASSWORD
  nats_token:
    description: Bearer token checked by the auth callout.
    type: str
    env:
      - name: FLEET_NATS_TOKEN
  connection_file:
    description:
      - JSON or YAML connection file (C(urls) and C(auth), at the top level or under
        C(connection)), such as the state file written by C(fleet stack up).
      - Without it, the local stack's state file is used when it exists.
    type: path
    env:
      - name: FLEET_CONNECTION_FILE
  timeout:
    description: Seconds to wait for NATS.
    type: float
    default: 5
requirements:
  - The C(harmony_fleet) Python package on the controller (C(pip install harmony-fleet)).
"""
