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
  nats_tls_ca_file:
    description:
      - PEM bundle of the certificate authorities that sign the NATS server's certificate
        (for example the lab CA of C(fleet stack up --tls), its C(tls.ca_file)). Setting it
        makes the connection TLS; the server's certificate and host name are always verified.
      - Without it a C(tls://) URL is verified against the controller's system CAs.
      - Falls back to C(fleet_nats_tls_ca_file), then E(FLEET_NATS_TLS_CA_FILE), then the
        connection file's C(tls_ca_file).
    type: path
  nats_tls_cert_file:
    description:
      - Client certificate (PEM) for a NATS server that asks for one (mutual TLS). Requires
        O(nats_tls_key_file).
      - Falls back to C(fleet_nats_tls_cert_file), then E(FLEET_NATS_TLS_CERT_FILE), then the
        connection file's C(tls_cert_file).
    type: path
  nats_tls_key_file:
    description:
      - Private key (PEM) of O(nats_tls_cert_file).
      - Falls back to C(fleet_nats_tls_key_file), then E(FLEET_NATS_TLS_KEY_FILE), then the
        connection file's C(tls_key_file).
    type: path
  connection_file:
    description:
      - JSON or YAML file holding the connection (C(urls) and C(auth)), at the top level or
        under a C(connection) key, such as the state file written by C(fleet stack up).
      - TLS settings (C(tls_ca_file), C(tls_cert_file), C(tls_key_file)) in the file apply
        unless given as options.
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
  - The Python packages in the collection's C(requirements.txt) on the controller
    (pydantic, pydantic-settings, nats-py, PyJWT, PyYAML); the collection ships the
    C(harmony_fleet) package itself.
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
  nats_tls_ca_file:
    description: PEM bundle of the CAs that sign the NATS server's certificate; makes the connection TLS.
    type: path
    env:
      - name: FLEET_NATS_TLS_CA_FILE
  nats_tls_cert_file:
    description: Client certificate (PEM) for mutual TLS.
    type: path
    env:
      - name: FLEET_NATS_TLS_CERT_FILE
  nats_tls_key_file:
    description: Private key (PEM) of the client certificate.
    type: path
    env:
      - name: FLEET_NATS_TLS_KEY_FILE
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
  - The Python packages in the collection's C(requirements.txt) on the controller
    (pydantic, pydantic-settings, nats-py, PyJWT, PyYAML); the collection ships the
    C(harmony_fleet) package itself.
"""

    # For lookup plugins: options also come from the play's variables (fleet_nats_*), the
    # same host variables the modules read.
    LOOKUP = r"""
options:
  nats_url:
    description: NATS server URL(s), comma-separated.
    type: str
    env:
      - name: FLEET_NATS_URL
    vars:
      - name: fleet_nats_url
  nats_user:
    description: NATS user name (shared user/password credentials, development only).
    type: str
    env:
      - name: FLEET_NATS_USER
    vars:
      - name: fleet_nats_user
  nats_password:
    description: Password for O(nats_user).
    type: str
    env:
      - name: FLEET_NATS_PASSWORD
    vars:
      - name: fleet_nats_password
  nats_token:
    description: Bearer token checked by the auth callout. Mutually exclusive with O(nats_password).
    type: str
    env:
      - name: FLEET_NATS_TOKEN
    vars:
      - name: fleet_nats_token
  nats_tls_ca_file:
    description: PEM bundle of the CAs that sign the NATS server's certificate; makes the connection TLS.
    type: path
    env:
      - name: FLEET_NATS_TLS_CA_FILE
    vars:
      - name: fleet_nats_tls_ca_file
  nats_tls_cert_file:
    description: Client certificate (PEM) for mutual TLS.
    type: path
    env:
      - name: FLEET_NATS_TLS_CERT_FILE
    vars:
      - name: fleet_nats_tls_cert_file
  nats_tls_key_file:
    description: Private key (PEM) of the client certificate.
    type: path
    env:
      - name: FLEET_NATS_TLS_KEY_FILE
    vars:
      - name: fleet_nats_tls_key_file
  connection_file:
    description:
      - JSON or YAML connection file (C(urls) and C(auth), at the top level or under
        C(connection)), such as the state file written by C(fleet stack up).
      - Without it, the local stack's state file is used when it exists.
    type: path
    env:
      - name: FLEET_CONNECTION_FILE
    vars:
      - name: fleet_connection_file
  timeout:
    description: Seconds to wait for NATS.
    type: float
    default: 5
  persistent:
    description:
      - Share one NATS connection with the fleet modules of the run through the per-user broker
        process; when false the lookup opens and closes a connection of its own.
    type: bool
    default: true
    vars:
      - name: fleet_nats_persistent
requirements:
  - The Python packages in the collection's C(requirements.txt) on the controller
    (pydantic, pydantic-settings, nats-py, PyJWT, PyYAML); the collection ships the
    C(harmony_fleet) package itself.
"""
