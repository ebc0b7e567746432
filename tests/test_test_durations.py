"""scripts/test_durations.py: the seconds per test file that order CI's run, from JUnit reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.test_durations import main


def junit(path: Path, cases: list[tuple[str, float]]) -> Path:
    """A JUnit report as pytest writes it: one ``testcase`` per test, with its classname and seconds."""
    body = "".join(
        f'<testcase classname="{classname}" name="t{i}" time="{s}"/>' for i, (classname, s) in enumerate(cases)
    )
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


def test_seconds_add_up_per_file_longest_first_and_a_later_report_replaces_a_file(tmp_path: Path) -> None:
    whole_run = junit(
        tmp_path / "run.xml",
        [
            ("tests.test_pipeline_e2e", 80.0),
            ("tests.test_pipeline_e2e", 20.25),
            ("tests.ssl_core.test_knn", 1.5),
            ("tests.ssl_core.test_engine.TestResume", 3.0),  # a test class: the file is tests/ssl_core/test_engine.py
            ("benchmarks.something", 9.0),  # not a test file
        ],
    )
    out = tmp_path / "durations.json"
    main([str(whole_run), "--out", str(out)])
    durations = json.loads(out.read_text())
    assert durations == {
        "tests/test_pipeline_e2e.py": 100.2,
        "tests/ssl_core/test_engine.py": 3.0,
        "tests/ssl_core/test_knn.py": 1.5,
    }
    assert list(durations) == sorted(durations, key=lambda f: -durations[f])

    rerun = junit(tmp_path / "rerun.xml", [("tests.ssl_core.test_knn", 200.0)])
    main([str(whole_run), str(rerun), "--out", str(out)])
    assert list(json.loads(out.read_text()).items())[0] == ("tests/ssl_core/test_knn.py", 200.0)


def test_a_report_without_test_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = junit(tmp_path / "empty.xml", [("benchmarks.something", 1.0)])
    with pytest.raises(SystemExit):
        main([str(empty), "--out", str(tmp_path / "out.json")])
    assert "has no test case of a file under tests/" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_the_committed_figures_name_only_test_files_that_exist() -> None:
    """A renamed or deleted file must not keep its place in the order: refresh the figures."""
    from scripts.test_durations import DURATIONS_FILE, REPO_ROOT

    missing = [path for path in json.loads(DURATIONS_FILE.read_text()) if not (REPO_ROOT / path).is_file()]
    assert missing == [], f"run scripts/test_durations.py on a fresh JUnit report; gone: {missing}"
