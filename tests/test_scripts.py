"""The closing line CI reads: scripts/summarize_junit.py over real pytest JUnit reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

SUMMARIZE = Path(__file__).parent.parent / "scripts" / "summarize_junit.py"

SAMPLE = """
import pytest

def test_passes():
    pass

@pytest.fixture
def breaks_in_teardown():
    yield
    raise RuntimeError("teardown failed")

def test_passes_then_fails_in_teardown(breaks_in_teardown):
    pass

def test_fails():
    assert False

def test_skips():
    pytest.skip("not here")
"""


def summarize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUMMARIZE), str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_each_test_counts_once_per_session_and_sessions_are_named(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_sample=SAMPLE)
    reports = tmp_path / "reports"
    reports.mkdir()
    for session in ("tests-3.12-both", "tests-3.13-both"):
        pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={reports / session}.xml")
    result = summarize(reports)
    assert result.stdout.splitlines() == [
        "tests-3.12-both: 1 passed, 2 failed, 1 skipped",
        "tests-3.13-both: 1 passed, 2 failed, 1 skipped",
        "tests: 2 passed, 4 failed, 2 skipped",
    ]
    assert result.returncode == 1


def test_a_green_run_exits_zero_and_no_tests_is_a_failure(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_green="def test_ok():\n    pass\n")
    reports = tmp_path / "reports"
    reports.mkdir()
    pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={reports}/t.xml")
    result = summarize(reports)
    assert result.stdout.splitlines()[-1] == "tests: 1 passed, 0 failed, 0 skipped"
    assert result.returncode == 0

    pytester.makepyfile(test_green="")
    pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={reports}/t.xml")
    result = summarize(reports)
    assert result.stdout.splitlines()[-1] == "tests: 0 passed, 0 failed, 0 skipped"
    assert result.returncode == 1
