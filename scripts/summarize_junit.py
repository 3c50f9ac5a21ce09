"""Print the closing lines of a test run from the JUnit reports of its pytest sessions.

One line per session (``tests-3.13(both): 610 passed, 0 failed, 2 skipped``), then the
total as the last line. A test counts once per session whatever happened to it: a test
that passed and then failed in teardown is one failure, not a pass and an error. Exits 1
when anything failed, or when pytest sessions ran but no test did.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def outcomes(report: Path) -> dict[tuple[str, str], str]:
    """Each test of one report and its outcome (the worst seen, if it appears twice)."""
    seen: dict[tuple[str, str], str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        key = (case.get("classname", ""), case.get("name", ""))
        if _RANK[outcome] >= _RANK[seen.get(key, "passed")]:
            seen[key] = outcome
    return seen


def line(name: str, counts: dict[str, int]) -> str:
    return (
        f"{name}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    )


def main(folder: str) -> int:
    total = {"passed": 0, "failed": 0, "skipped": 0}
    reports = sorted(Path(folder).glob("*.xml"))
    for report in reports:
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        try:
            results = outcomes(report)
        except ET.ParseError as exc:  # a session killed mid-write
            print(f"{report.stem}: unreadable report ({exc})")
            total["failed"] += 1
            continue
        for outcome in results.values():
            counts[outcome] += 1
            total[outcome] += 1
        print(line(report.stem, counts))
    if not reports:
        # Sessions without pytest (lint alone, say); nox's own exit status tells the rest.
        print("no pytest session ran")
        return 0
    print(line("tests", total))
    return 1 if total["failed"] or not sum(total.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".reports"))
