"""The viewer in a real browser (headless Chromium through Selenium): open a run, filter by a
drop reason, open a record, see its lineage and candidates, accept it, find the decision in
review.jsonl; records holding HTML run no script, in the viewer and in report.html.

Skips (with the reason) where Chromium, its driver or Selenium is missing; CI installs them
(`apt-get install -y chromium chromium-driver`, selenium from the dev extra).
Set DATAGEN_SCREENSHOTS=DIR to save the home and record pages as PNGs (docs/ holds ours).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from review_run import make_run
from viewer_server import serving


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    found = _chromium()
    if found is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scripted_module_server) -> Path:
    return make_run(tmp_path_factory.mktemp("browser"), scripted_module_server.base_url)


def _no_script_ran(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    assert driver.execute_script("return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no alert is open


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("DATAGEN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _click_and_wait(driver, element) -> None:
    """Click a link or submit button and wait until the next page has replaced this one: the
    navigation may start after click() returns (CI once read the old page after a form post)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old_page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old_page))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_filter_open_review_in_a_browser(browser, run_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    from datagen.viewer import build_app

    with serving(build_app(run_dir)) as url:
        browser.get(url + "/")
        assert browser.find_elements(By.CSS_SELECTOR, "svg") and "Funnel" in browser.page_source
        _screenshot(browser, "viewer_home.png")
        _click_and_wait(browser, browser.find_element(By.LINK_TEXT, "exact_duplicate"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#records tr")[1:]
        assert rows and all("exact_duplicate" in row.text for row in rows)
        assert browser.find_element(By.CSS_SELECTOR, "select[name=reason] option[selected]").text == "exact_duplicate"
        _click_and_wait(browser, rows[0].find_element(By.CSS_SELECTOR, "a.open"))
        assert browser.find_element(By.ID, "drop-reason").text == "exact_duplicate"
        lineage = browser.find_elements(By.CSS_SELECTOR, "#lineage tr")[1:]
        assert len(lineage) >= 3 and any("input" in r.text for r in lineage) and any("dedup" in r.text for r in lineage)
        candidates = browser.find_elements(By.CSS_SELECTOR, "#candidates tr")[1:]
        assert len(candidates) == 2 and "(kept)" in candidates[0].text
        record_id = browser.find_element(By.TAG_NAME, "h1").text.split()[-1]
        _screenshot(browser, "viewer_record.png")
        browser.find_element(By.NAME, "who").send_keys("selenium")
        _click_and_wait(browser, browser.find_element(By.ID, "accept"))
        assert "accept" in browser.find_element(By.CSS_SELECTOR, "p.decision").text
    decisions = [json.loads(line) for line in (run_dir / "review.jsonl").read_text().splitlines()]
    assert decisions[-1] | {"when": None} == {"id": record_id, "stage": "dedup", "decision": "accept",
                                              "who": "selenium", "when": None}


def test_html_in_records_runs_no_script(browser, run_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    from datagen.viewer import build_app

    with serving(build_app(run_dir)) as url:
        browser.get(url + "/records?q=onerror")
        _no_script_ran(browser)
        assert "<script>window.__xss = 1</script>" in browser.find_element(By.ID, "records").text
        _click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "#records a.open"))
        _no_script_ran(browser)
        assert "<img src=x onerror=" in browser.find_element(By.ID, "instruction").text
        assert '<a href="javascript:' in browser.find_element(By.ID, "output").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#output a, #instruction img, #instruction script")
    browser.get((run_dir / "report.html").resolve().as_uri())
    _no_script_ran(browser)
    assert "<script>window.__xss = 1</script>" in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "td script, td img, td a")
