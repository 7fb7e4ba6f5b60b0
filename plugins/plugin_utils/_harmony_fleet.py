# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE to the collection: make the harmony_fleet package it ships importable.

The plugins run on the controller and do their work with the Python package harmony_fleet
(the wire contract, NATS connections, credentials). The collection carries that package in
daemons/harmony_fleet, so a Galaxy, Automation Hub or execution-environment install gets
exactly the version its plugins were written for; only its dependencies come from a package
index (requirements.txt). The shipped copy wins over any other harmony_fleet on sys.path.
"""

from __future__ import annotations

import os
import sys

SHIPPED_PACKAGE_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "daemons"))


def use_shipped_package():
    """Put the collection's own copy of harmony_fleet first on sys.path (idempotent)."""
    if os.path.isdir(os.path.join(SHIPPED_PACKAGE_DIR, "harmony_fleet")):
        if SHIPPED_PACKAGE_DIR in sys.path:
            sys.path.remove(SHIPPED_PACKAGE_DIR)
        sys.path.insert(0, SHIPPED_PACKAGE_DIR)


REQUIREMENTS_HINT = (
    "the harmony.fleet plugins need the Python packages in the collection's requirements.txt "
    "on the controller: pip install -r <collection path>/requirements.txt "
    "(ansible-galaxy collection list harmony.fleet shows the path)"
)
