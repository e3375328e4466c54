"""The intake stand-in's page in a real headless browser (Debian's Chromium): search a metric, open its plot, read
the request log, and keep a screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import API_KEY, run_relay, wait_for

WRONG_KEY = "0123456789wrongwrongwrong0000bad"


def browser():  # type: ignore[no-untyped-def]
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        install = "apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is missing in CI: .ci/run installs it ({install})")
        pytest.skip(f"no Chromium here ({install}); .ci/run installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _browse(url: str, screenshot: Path) -> dict[str, object]:
    """The page refreshes its tables every 2 s, so rows are read and clicked in one script each (an element found
    a moment before may be gone)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 15)
        rows = lambda: driver.execute_script(  # noqa: E731
            "return [...document.querySelectorAll('#metrics tbody tr')].map(r => r.dataset.metric)"
        )
        click = lambda metric: driver.execute_script(  # noqa: E731
            "document.querySelector(`#metrics tbody tr[data-metric='${arguments[0]}']`).click()", metric
        )
        points = lambda: driver.execute_script(  # noqa: E731
            "const p = document.querySelector('#plot polyline.series'); return p ? p.getAttribute('points') : ''"
        )
        search = driver.find_element(By.ID, "search")
        wait.until(lambda _: len(rows()) >= 3)
        before = len(rows())
        search.send_keys("page.vi")
        wait.until(lambda _: rows() == ["page.views"])
        click("page.views")
        wait.until(lambda _: len(points().split()) >= 3)
        plotted = len(points().split())
        scroll = driver.execute_script("window.scrollTo(0, 120); return window.scrollY")
        time.sleep(2.5)  # one refresh later: updated in place, no reload, no jump
        kept = driver.execute_script("return [window.scrollY, document.getElementById('search').value]")
        requests = driver.find_element(By.ID, "requests").text
        search.clear()
        search.send_keys("latency")
        wait.until(lambda _: rows() == ["latency"])
        click("latency")
        wait.until(lambda _: "p95" in driver.execute_script("return document.getElementById('legend').textContent"))
        distribution = driver.execute_script("return document.getElementById('contexts').innerText")
        search.clear()
        search.send_keys("page.vi")
        wait.until(lambda _: rows() == ["page.views"])
        click("page.views")
        wait.until(lambda _: points() and "page.views" in driver.find_element(By.ID, "detail-title").text)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(screenshot))
        return {"before": before, "plotted": plotted, "scroll": scroll, "kept": kept, "requests": requests,
                "distribution": distribution}  # fmt: skip
    finally:
        driver.quit()


async def test_the_page_searches_a_metric_plots_it_and_logs_requests_in_a_real_browser(intake, tmp_path):
    stand_in, url = intake
    rejected = urllib.request.Request(url + "/api/v1/series", data=b"{}", headers={"DD-API-KEY": WRONG_KEY})
    with pytest.raises(urllib.error.HTTPError):
        await asyncio.to_thread(urllib.request.urlopen, rejected)
    async with run_relay(tmp_path, url) as relay:
        for flush in range(4):
            lines = [f"page.views:{flush + 1}|c|#env:prod", f"page.views:{flush + 2}|c|#env:dev", "queue.depth:3|g"]
            lines += [f"latency:{value}|d" for value in range(1, 101)]
            relay.send_udp("\n".join(lines).encode())
            await asyncio.sleep(1.05)
        await wait_for(lambda: sum(s["metric"] == "page.views" for s in stand_in.series) >= 6)
        screenshot = tmp_path / "intake-page.png"
        seen = await asyncio.to_thread(_browse, url, screenshot)
        await relay.stop()
    print(f"screenshot of the intake page: {screenshot}")
    assert seen["before"] >= 3 and seen["plotted"] >= 3
    assert seen["kept"] == [seen["scroll"], "page.vi"]  # the refresh kept the scroll and the search
    requests = str(seen["requests"])
    assert "POST /api/v2/series 202" in requests and f"***{API_KEY[-5:]}" in requests
    assert "POST /api/v1/series 403" in requests and f"***{WRONG_KEY[-5:]}" in requests
    assert API_KEY not in requests and WRONG_KEY not in requests
    header, row = (line.split("\t") for line in str(seen["distribution"]).splitlines()[:2])
    latest = dict(zip(header, row, strict=True))  # 1..100 in each flush: the sketch's percentiles, within 1 %
    assert latest["count"] == "100" and latest["min"] == "1" and latest["max"] == "100"
    assert abs(float(latest["p95"]) - 95) < 1.5 and abs(float(latest["p50"]) - 50) < 1
    assert screenshot.stat().st_size > 20_000
