"""The device daemon: config, command server, reports (and, with the runtime, workloads)."""
