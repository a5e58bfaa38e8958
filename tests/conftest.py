import os
import time
from collections import defaultdict

# Unit tests use Locust's statistics classes; gevent's monkey-patching would change threads and
# sockets for every other test of the session. Locust itself runs in subprocesses.
os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")

# What each run costs, printed at its end: wall time per test module (fixture set-up included,
# so a module's deploys count where they happen) and each deploy the tests ran.
_module_seconds: dict[str, float] = defaultdict(float)
_module_tests: dict[str, int] = defaultdict(int)
_session_started = time.monotonic()


def pytest_runtest_logreport(report):
    module = report.nodeid.split("::")[0]
    _module_seconds[module] += report.duration
    if report.when == "call" or (report.when == "setup" and report.skipped):
        _module_tests[module] += 1


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def pytest_terminal_summary(terminalreporter):
    if not _module_seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "wall time per test module (fixture set-up included)")
    width = max(len(module) for module in _module_seconds)
    for module, seconds in sorted(_module_seconds.items(), key=lambda item: -item[1]):
        write(f"{module:<{width}}  {_module_tests[module]:>4} tests  {_minutes(seconds):>10}")
    write(f"{'session':<{width}}  {sum(_module_tests.values()):>4} tests  "
          f"{_minutes(time.monotonic() - _session_started):>10}")
    from tests.timing import DEPLOY_TIMES
    if DEPLOY_TIMES:
        terminalreporter.write_sep("=", "deploys (pyinfra runs) and VM boots, in the order they ended")
        for run in DEPLOY_TIMES:
            outcome = "ok" if run["rc"] == 0 else f"exit {run['rc']}"
            write(f"{_minutes(run['seconds']):>10}  {outcome:<7} {run['inventory']:<28} "
                  f"{' '.join(run['args']):<40} {run['who']}")
