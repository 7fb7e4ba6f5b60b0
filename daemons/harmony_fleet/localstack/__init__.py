"""The embedded default: a whole fleet on one machine (``fleet stack up``).

A real nats-server with JetStream (:mod:`.nats_server`), the report writer and auth callout
(``fleet-callout``), a small OIDC issuer standing in for Zitadel (:mod:`.issuer`) and agents
driving the local podman (:mod:`.stack`); :mod:`.images` builds the tiny demo image. The same
code is the integration tests' fixture, so the demo and the tests cannot drift apart.
"""
