"""The status page in a real browser: headless Chromium, driven by Selenium and chromedriver.

A real proxy, a client whose target answers and one whose target refuses connections, and
Prometheus scraping both through the proxy; the page must show both clients and their last
scrapes, keep a client's hostile label as text, and fit a phone's screen. Screenshots are
written to the test's temporary directory (their paths are printed).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (a test
extra); without them the test skips, and fails under ``PUSHPROX_REQUIRE_E2E=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import skip_or_fail
from tests.harness.prometheus import proxied_job
from tests.harness.stack import Stack
from tests.harness.waiting import free_port, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("PUSHPROX_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PUSHPROX_E2E_CHROMEDRIVER", "/usr/bin/chromedriver"))
#: A label that would run a script if the page let it become markup.
HOSTILE_LABEL = "<img src=x onerror=\"document.title='owned'\">"
PHONE = (412, 915)
DESKTOP = (1280, 900)


def _browser_missing() -> list[str]:
    missing = [
        f"{path} is missing (Debian package {package})"
        for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
        if not os.access(path, os.X_OK)
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package is missing (pip install -e '.[test]')")
    return missing


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, quit at the end of the test."""
    missing = _browser_missing()
    if missing:
        reason = "the browser test needs " + "; ".join(missing)
        skip_or_fail(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER),
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _rows(driver: Any) -> dict[str, Any]:
    """The clients' table rows by FQDN, in page order."""
    from selenium.webdriver.common.by import By

    return {row.find_element(By.CLASS_NAME, "fqdn").text: row
            for row in driver.find_elements(By.CSS_SELECTOR, "tbody tr")}


def _cell(row: Any, label: str) -> str:
    from selenium.webdriver.common.by import By

    text: str = row.find_element(By.CSS_SELECTOR, f'td[data-label="{label}"]').text
    return text


def _screenshot(driver: Any, path: Path) -> None:
    assert driver.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    print(f"status page screenshot: {path}")


def test_status_page_shows_healthy_and_failing_clients(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    """Both clients with their last scrape, the failing one first, readable on a phone."""
    from selenium.webdriver.common.by import By

    exporter = stack.exporter("alpha")
    proxy = stack.proxy()
    stack.client(proxy, "healthy.example", [exporter.port],
                 extra=["--label", f"site={HOSTILE_LABEL}"])
    closed_port = free_port()  # nothing listens there: the client's scrape is refused
    stack.client(proxy, "failing.example", [closed_port])
    healthy, failing = f"healthy.example:{exporter.port}", f"failing.example:{closed_port}"
    prometheus = stack.prometheus([proxied_job("nat", [healthy, failing], proxy.port)])
    prometheus.wait_up("nat", {healthy: 1, failing: 0})

    def last_statuses() -> dict[str, int] | None:
        view = proxy.get("/api/v1/clients").json()
        statuses = {client["fqdn"]: (client["last_scrape"] or {}).get("status")
                    for client in view["clients"]}
        wanted = {"healthy.example": 200, "failing.example": 502}
        return statuses if statuses == wanted else None

    wait_for(last_statuses, timeout=20, what="both clients' last scrapes in /api/v1/clients",
             watch=[proxy.process])

    browser.set_window_size(*DESKTOP)
    browser.get(proxy.url + "/")
    assert browser.title == "pushprox proxy"
    rows = _rows(browser)
    assert list(rows) == ["failing.example", "healthy.example"], list(rows)
    bad, good = rows["failing.example"], rows["healthy.example"]
    assert bad.get_attribute("class") == "failing"
    assert "502 failing" in _cell(bad, "Last scrape"), _cell(bad, "Last scrape")
    assert "the client could not scrape the target" in _cell(bad, "Last scrape")
    assert _cell(good, "Last scrape").startswith("200 ok in "), _cell(good, "Last scrape")
    assert "last seen" in _cell(good, "Poll"), _cell(good, "Poll")
    assert _cell(good, "Labels") == f"site={HOSTILE_LABEL}"
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_elements(By.TAG_NAME, "script") == []
    assert browser.find_element(By.TAG_NAME, "thead").is_displayed()
    _screenshot(browser, tmp_path / "status-desktop.png")

    browser.set_window_size(*PHONE)
    browser.get(proxy.url + "/")
    width = browser.execute_script("return window.innerWidth")
    # No sideways scrolling: every row fits the phone's width, one cell under the other.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    assert not browser.find_element(By.TAG_NAME, "thead").is_displayed()
    bad = _rows(browser)["failing.example"]
    assert "502 failing" in _cell(bad, "Last scrape")
    assert browser.title == "pushprox proxy"
    _screenshot(browser, tmp_path / "status-phone.png")
