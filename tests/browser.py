"""A real headless Chromium for the chat page tests, driven by Selenium.

Debian's `chromium` and `chromium-driver` packages (`/usr/bin/chromium`,
`/usr/bin/chromedriver`); both paths are given to Selenium, so Selenium
Manager never looks for (or downloads) a browser or driver. Without them the
tests are skipped, except under CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1200, 800)
# Headless as root in a container, and quiet on a closed network: without the
# background-networking flags Chromium keeps trying to reach Google's services.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
T = TypeVar("T")


def require_chromium() -> None:
    """Skip the test without Chromium and its driver (fail it under CI)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        message = f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile, a 1200x800 window, closed afterwards."""
    require_chromium()
    profile = tempfile.mkdtemp(prefix="raychat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(
        options=options, service=ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        # --window-size is the outer size: make the page's own viewport 1200x800.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(
    driver: WebDriver, condition: Callable[[], T | None], what: str, timeout_s: float = 20.0
) -> T:
    """Poll `condition` every 50 ms until it returns something truthy; fail after `timeout_s`."""

    def check(_: Any) -> T | None:
        return condition()

    result: T = WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(
        check, message=f"timed out waiting for {what}"
    )
    return result
