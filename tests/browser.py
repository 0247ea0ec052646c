"""Headless Chromium for the tests that open the ComfyUI editor the simulator serves.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them), driven by Selenium. Without them
these tests skip with a reason; under CI (``CI=true``) they fail instead, like the sshd tests.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BROWSERS = ("chromium", "chromium-browser")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


def _first(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if path:
            return path
    return None


def require_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip (fail under CI) with what is missing."""
    missing = []
    browser, driver = _first(BROWSERS), _first(DRIVERS)
    if not browser:
        missing.append("chromium (apt-get install chromium)")
    if not driver:
        missing.append("chromedriver (apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = "the browser tests need " + ", ".join(missing)
        if IN_CI:
            pytest.fail(reason + " (CI=true: these tests must run)")
        pytest.skip(reason)
    assert browser and driver
    return browser, driver


def start_chromium(profile: Path, *, width: int = 1400, height: int = 900, network_log: bool = False):
    """A headless Chromium that reaches loopback only: the editor's calls to Comfy's cloud (release notes)
    fail at once instead of leaving the machine."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--mute-audio"):
        opts.add_argument(arg)
    if network_log:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver), options=opts)
    except Exception as e:  # a browser that is installed but cannot start here
        if IN_CI:
            pytest.fail(f"Chromium did not start: {e}")
        pytest.skip(f"Chromium did not start here: {str(e).splitlines()[0]}")


def wait_for(driver, script: str, timeout: float = 60.0, what: str = "condition"):
    """Poll ``return <script>`` in the page until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = driver.execute_script(f"return {script}")
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


def run_async(driver, body: str, *args):
    """Run ``body`` (the inside of an async function; ``args`` is its arguments) and return its value; a
    rejection comes back as an AssertionError with the page's stack."""
    got = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"(async (args) => {{ {body} }})(Array.from(arguments).slice(0, -1))"
        ".then((value) => done({value}), (e) => done({error: String(e && e.stack || e)}));", *args)
    assert "error" not in got, got["error"]
    return got["value"]
