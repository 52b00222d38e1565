"""The demo page of `vdcnn-res serve` (GET /) in a real headless Chromium, driven by Selenium.

A real server process on 127.0.0.1 with an API key serves the tiny model; the browser opens the
page, is asked for the key, types a text, submits it and reads back what the page shows: the
top labels as bars with their probabilities and the explanation as a character heatmap, both
compared with what the server's JSON endpoints answer for the same text. A text holding
`<script>` and `<img onerror>` must appear as those characters and run nothing. Skipped, with a
reason, where no Chromium or chromedriver is installed (scripts/install_browser.sh installs them).

Run as a script, it takes the screenshot in docs/ (an exported model, no key):

    .venv/bin/python tests/inference/test_demo_page.py exports/NAME docs/demo_page.png "Some text"
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: the imports pytest's rootdir would make possible
    sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import pytest

from fixtures.tiny import LABELS

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("captum", reason="the heatmap needs Captum on the server: pip install 'vdcnn-res[explain]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs Selenium: pip install 'vdcnn-res[test]'")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_server import ServerProcess, client  # noqa: E402

KEY = "demo-page-key-0123456789"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless Chromium and chromedriver here: run scripts/install_browser.sh (Debian chromium, chromium-driver)",
)
TEXT = "Stocks rallied on Wall Street after the Fed kept rates unchanged."


def open_browser(width: int = 1000, height: int = 900):
    """Headless Chromium that talks to nothing but the pages it is sent to."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


def classify(browser, url: str, text: str, key: str | None = None) -> None:
    """Open the page, give the key if it asks for one, type `text`, submit, wait for the answer."""
    browser.get(f"{url}/")
    wait = WebDriverWait(browser, 60)
    # The page asks /metadata at once: it either shows the model or, refused, the key field.
    wait.until(lambda d: d.execute_script(
        "return !document.getElementById('keyrow').hidden || document.getElementById('model').textContent.includes('labels')"))
    if key is None:
        assert not browser.find_element(By.ID, "key").is_displayed(), "the page asks for a key the server does not want"
    else:
        assert browser.find_element(By.ID, "key").is_displayed(), "the page did not ask for the server's API key"
        assert "no API key" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "key").send_keys(key)
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.execute_script(
        "const s = document.getElementById('status'); return !document.getElementById('submit').disabled && "
        "(!document.getElementById('explanation').hidden || s.className === 'error')"))
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("class") != "error", status.text


def shown_bars(browser) -> list[tuple[str, float, str, str]]:
    """(label as shown, probability, percentage as shown, bar width) of each bar, top first."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#bars .bar')].map(r => [r.querySelector('.name').textContent, "
        "Number(r.dataset.probability), r.querySelector('.pct').textContent, r.querySelector('.fill').style.width]);")


def shown_heatmap(browser) -> list[tuple[str, float | None, str]]:
    """(character as shown, score or None, computed background colour) of each heatmap cell."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#heatmap span')].map(s => [s.textContent, "
        "s.dataset.score === undefined ? null : Number(s.dataset.score), getComputedStyle(s).backgroundColor]);")


def page_errors(browser) -> list[str]:
    """The browser console's errors (script errors, Content-Security-Policy refusals), but the expected 401."""
    return [e["message"] for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "status of 401" not in e["message"]]


@pytest.fixture(scope="module")
def page_server(ckpt, tmp_path_factory):
    from vdcnn_res.cli.export import export_checkpoint

    out = tmp_path_factory.mktemp("demo_export")
    export_checkpoint(ckpt, out, overwrite=True)
    server = ServerProcess("--model", str(out), "--precision", "fp32", env={"VDCNN_API_KEY": KEY})
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no headless Chromium and chromedriver here: run scripts/install_browser.sh")
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()


@needs_browser
def test_the_page_shows_the_top_labels_and_the_heatmap_the_server_computes(page_server, browser):
    classify(browser, page_server.url, TEXT, key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    expected = client().post(f"{page_server.url}/predict", json={"texts": [TEXT], "top_k": 4}, headers=auth).json()
    bars = shown_bars(browser)
    ranked = expected["predictions"][0]["top_k"]
    assert [b[0] for b in bars] == [r["label"] for r in ranked] and sorted(b[0] for b in bars) == sorted(LABELS)
    for (_, probability, pct, width), r in zip(bars, ranked):
        assert probability == pytest.approx(r["probability"], abs=1e-6)
        assert pct == f"{100 * r['probability']:.1f} %"
        assert width.endswith("%") and float(width[:-1]) == pytest.approx(100 * r["probability"], abs=0.005)
    assert math.fsum(b[1] for b in bars) == pytest.approx(1.0, abs=1e-5)

    explained = client().post(f"{page_server.url}/explain", json={"text": TEXT}, headers=auth).json()
    assert browser.find_element(By.ID, "explained").text == f"“{explained['label']}”" == f"“{ranked[0]['label']}”"
    cells = shown_heatmap(browser)
    assert "".join(c[0] for c in cells) == TEXT and len(cells) == len(TEXT)
    scores = [c[1] for c in cells]
    assert scores == pytest.approx(explained["attributions"], abs=1e-9)
    top = max(range(len(scores)), key=lambda i: abs(scores[i]))
    assert cells[top][2] == ("rgb(34, 139, 34)" if scores[top] > 0 else "rgb(214, 39, 40)")  # full colour at the largest
    for _, score, colour in cells:  # green for the label, red against it
        assert colour.startswith("rgb(34, 139, 34" if score >= 0 else "rgb(214, 39, 40") or colour.startswith(
            "rgba(34, 139, 34" if score >= 0 else "rgba(214, 39, 40"), (score, colour)
    assert page_errors(browser) == []


@needs_browser
def test_user_text_is_shown_as_text_and_never_runs(page_server, browser):
    text = ('<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
            "<b>bold</b> &amp; done")
    assert len(text) < 128  # all read by the model: every character is in the heatmap
    classify(browser, page_server.url, text, key=KEY)
    cells = shown_heatmap(browser)
    assert "".join(c[0] for c in cells) == text and all(c[1] is not None for c in cells)
    assert browser.find_elements(By.CSS_SELECTOR, "#heatmap *:not(span), #heatmap span *, img") == []
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1  # the page's own
    assert browser.title == "vdcnn-res demo"
    assert browser.find_element(By.ID, "text").get_attribute("value") == text
    assert page_errors(browser) == []


def main(argv: list[str]) -> None:
    """Screenshot of the page after one prediction: MODEL_DIR OUT.png [TEXT]."""
    model, out, text = argv[0], Path(argv[1]), argv[2] if len(argv) > 2 else TEXT
    server = ServerProcess("--model", model, "--precision", "fp32").start()
    driver = open_browser(width=900, height=1200)
    try:
        server.wait_ready()
        classify(driver, server.url, text)
        driver.find_element(By.TAG_NAME, "main").screenshot(str(out))
        print(f"wrote {out}: {', '.join(f'{b[0]} {b[2]}' for b in shown_bars(driver))}")
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
