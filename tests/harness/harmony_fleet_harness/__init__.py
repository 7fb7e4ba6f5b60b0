"""What only Harmony Fleet's tests and benchmarks need, kept out of the product package:

* :mod:`.pytest_plugin` — fixtures built on the local stack (``harmony_fleet.localstack``);
* :mod:`.kube_emulator` — a Kubernetes API emulator on kmock, for the operator's tests;
* :mod:`.simulate` — SIMULATED devices for operator tests and load benchmarks.
"""
