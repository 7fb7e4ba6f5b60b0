"""What the Ansible plugins and the ``fleet`` CLI do, over the bus.

:mod:`.operations` (ping, deploy, ...) runs on one NATS connection; :mod:`.broker` shares that
connection between Ansible's short-lived worker processes; :mod:`.deploy` converges a
deployment's desired-state keys; :mod:`.fleetview` reads devices, labels and liveness.
"""
