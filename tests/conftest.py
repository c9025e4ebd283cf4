pytest_plugins = ["tests.databases", "tests.brokers"]
