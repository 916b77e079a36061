"""Root conftest: the project's own tests drive pytest itself (pytester) to test the plugin."""

pytest_plugins = ["pytester"]
