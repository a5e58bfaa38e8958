"""What each deploy of a test run cost, for the table printed at the run's end (tests/conftest.py).
Kept outside the conftests, which pytest loads under names of their own."""

DEPLOY_TIMES: list[dict] = []  # who, inventory, args, seconds, rc: appended by tests/lab/harness.py
