"""A real headless browser for tests that check a generated page: Debian's chromium driven by playwright.

:func:`open_page` loads a local HTML file with every request other than ``file:`` and
``data:`` aborted and recorded, so a test can assert that the page is self-contained,
that its images decode, and what a reader sees. Without chromium or playwright the
test is skipped with the reason, except under ``CI=true``, where it fails: CI must
run every test (as ``full_cifar_archive`` in tests/conftest.py).

Example:
    >>> with open_page(tmp_path / "report.html") as browser:
    ...     assert browser.broken_images() == []
    ...     browser.page.screenshot(path=tmp_path / "page.png", full_page=True)
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import in_ci

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))  # Debian's package; override for other systems
LOCAL_SCHEMES = ("file:", "data:")


@dataclass
class OpenPage:
    """A loaded page and the requests it tried that left the machine (all aborted)."""

    page: Any  # playwright.sync_api.Page, imported only when playwright is there
    external_requests: list[str] = field(default_factory=list)

    def broken_images(self) -> list[str]:
        """``alt`` (else ``src``, cut short) of every <img> that did not decode to a non-empty image."""
        return self.page.evaluate(
            "() => Array.from(document.images)"
            "  .filter(img => !(img.complete && img.naturalWidth > 0))"
            "  .map(img => img.alt || img.src.slice(0, 80))"
        )


def browser_missing() -> str | None:
    """Why no browser test can run here, or None when chromium and playwright are both present."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM to its path)"
    return None


@contextmanager
def open_page(path: Path, width: int = 1280, height: int = 900) -> Iterator[OpenPage]:
    """Opens a local HTML file in headless chromium; the page is loaded when the block starts.

    Skips the calling test when chromium or playwright is missing, and fails it under ``CI=true``.
    """
    missing = browser_missing()
    if missing:
        if in_ci():
            pytest.fail(f"{missing} (CI=true: CI must run every test)")
        pytest.skip(missing)
    from playwright.sync_api import Route, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            opened = OpenPage(page=context.new_page())

            def local_only(route: Route) -> None:
                # Nothing leaves the machine; the "request" listener below records what tried.
                if route.request.url.startswith(LOCAL_SCHEMES):
                    route.continue_()
                else:
                    route.abort()

            context.route("**/*", local_only)
            opened.page.on(
                "request",
                lambda request: (
                    None if request.url.startswith(LOCAL_SCHEMES) else opened.external_requests.append(request.url)
                ),
            )
            opened.page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield opened
        finally:
            browser.close()
