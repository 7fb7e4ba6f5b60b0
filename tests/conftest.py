pytest_plugins = ["harmony_fleet.testing.pytest_plugin"]
