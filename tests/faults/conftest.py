"""The fault suite's tally: which faults were tried at how many points, and how many held.

Printed after the run as the table the README's reliability section quotes.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

_TALLY: dict[str, list[bool]] = defaultdict(list)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    fault = item.get_closest_marker("fault")
    if fault is not None and report.when == "call":
        _TALLY[str(fault.args[0])].append(report.passed)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY:
        return
    width = max(len(f) for f in _TALLY)
    terminalreporter.section("fault suite")
    terminalreporter.write_line(f"{'fault':<{width}}  points tried  held")
    for fault, results in _TALLY.items():
        terminalreporter.write_line(f"{fault:<{width}}  {len(results):>12}  {sum(results):>4}")
