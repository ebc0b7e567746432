"""Refreshes ``tests/file_durations.json``, the seconds each test file took, from a JUnit XML report.

    OMP_NUM_THREADS=1 bash scripts/test.sh -n 2 --dist loadfile --no-loadscope-reorder --junitxml=/tmp/junit.xml
    python scripts/test_durations.py /tmp/junit.xml
    python scripts/test_durations.py /tmp/junit.xml /tmp/rerun.xml   # a later report's files replace earlier ones

``tests/conftest.py`` hands the files to CI's two xdist workers longest first, so
that both end together; these figures say which are long. They order the run and
nothing else: a stale or missing figure costs balance, never a result. pytest's
JUnit "time" of a test is its setup, call and teardown together, so a file's module
fixtures count in its figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DURATIONS_FILE = REPO_ROOT / "tests" / "file_durations.json"


def file_seconds(junit_xml: Path) -> dict[str, float]:
    """Seconds per test file (``tests/...py``), from the test cases' ``classname`` and ``time``."""
    seconds: Counter[str] = Counter()
    for case in ET.parse(junit_xml).iter("testcase"):
        module = case.get("classname", "")
        if not module.startswith("tests."):
            continue
        # A test in a class has the class as the classname's last part: the file is the longest module prefix.
        parts = module.split(".")
        for end in range(len(parts), 0, -1):
            path = "/".join(parts[:end]) + ".py"
            if (REPO_ROOT / path).is_file():
                seconds[path] += float(case.get("time", 0.0))
                break
    return dict(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("junit_xml", type=Path, nargs="+", help="pytest --junitxml reports; the first of a whole run")
    parser.add_argument("--out", type=Path, default=DURATIONS_FILE)
    args = parser.parse_args(argv)
    seconds: dict[str, float] = {}
    for report in args.junit_xml:
        if not report.is_file():
            parser.error(f"no such file: {report}")
        found = file_seconds(report)
        if not found:
            parser.error(f"{report} has no test case of a file under tests/")
        seconds |= found
    ordered = {path: round(s, 1) for path, s in sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0]))}
    args.out.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{args.out}: {len(ordered)} files, {sum(ordered.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
