"""The search page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
a typed query shows images, an image upload finds itself, a path-traversal request and an
oversized upload are refused. Needs: apt-get install chromium chromium-driver; pip install selenium."""
import json
import os
import shutil

import pytest

from conftest import real_images, served_photos

pytestmark = pytest.mark.slow
LIMIT = 40_000
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download a browser or driver
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "secret.txt").write_text("must never be served")
    real_images(1, 400)[0].save(root / "big.bmp")  # ~480 kB, over the limit
    with served_photos(root, n=8, size=48, max_upload_bytes=LIMIT, default_k=4) as (url, _, _):
        yield {"url": url, "root": root}


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(condition)


def _clear(driver):
    driver.execute_script("document.getElementById('results').replaceChildren();"
                          "document.getElementById('status').textContent = '';")


def _first_caption(driver) -> str:
    # read in the page: the results are replaced as a whole, so element handles go stale
    return driver.execute_script(
        "const c = document.querySelector('#results figure.hit figcaption'); return c ? c.textContent : '';")


def _fetch(driver, path, method="GET", size=0):
    """Run fetch() inside the page; returns (status, JSON body)."""
    return driver.execute_async_script("""
        const [path, method, size, done] = arguments;
        const opts = {method: method};
        if (size) opts.body = new Blob([new Uint8Array(size)]);
        fetch(path, opts).then(async r => done([r.status, await r.text()]))
                         .catch(e => done([0, String(e)]));""", path, method, size)


def test_query_upload_and_refusals(browser, site):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(site["url"] + "/")
    _wait(d, lambda drv: drv.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "8 images" in d.find_element(By.ID, "info").text

    # a typed query returns images, with scores and the query's mask
    d.find_element(By.ID, "q").send_keys("a rocket on the launch pad")
    d.find_element(By.ID, "go").click()
    _wait(d, lambda drv: len(drv.find_elements(By.CSS_SELECTOR, "#results figure.hit")) == 4)
    _wait(d, lambda drv: drv.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth == 48)"))
    assert "4 results" in d.find_element(By.ID, "status").text
    assert d.find_element(By.ID, "masktitle").text.startswith("query mask:")
    assert len(d.find_elements(By.CSS_SELECTOR, "#mask span")) == 32

    # an image upload finds the same image first
    _clear(d)
    d.find_element(By.ID, "file").send_keys(str(site["root"] / "images" / "photo5.png"))
    _wait(d, lambda drv: _first_caption(drv).endswith("photo5.png"))
    assert _first_caption(d).startswith("1.0000") and "upload" in d.find_element(By.ID, "status").text

    # dropping an image on the drop zone does the same
    _clear(d)
    d.execute_async_script("""
        const done = arguments[0];
        fetch('/image/3').then(r => r.blob()).then(blob => {
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
            done();
        });""")
    _wait(d, lambda drv: _first_caption(drv).endswith("photo3.png"))
    assert _first_caption(d).startswith("1.0000")

    # path traversal: refused with a JSON error, the file's content never sent
    for path in ["/image/..%2F..%2Fsecret.txt", "/image/%2e%2e/%2e%2e/secret.txt", "/image/..%2Fsecret.txt"]:
        status, body = _fetch(d, path)
        assert status == 404 and "error" in json.loads(body) and "must never be served" not in body
    d.get(site["url"] + "/image/..%2F..%2Fsecret.txt")
    assert "must never be served" not in d.page_source and "error" in d.page_source

    # an oversized upload: the server refuses it, and so does the page before sending
    d.get(site["url"] + "/")
    _wait(d, lambda drv: drv.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    status, body = _fetch(d, "/api/search/image?k=2", "POST", LIMIT + 1)
    assert status == 413 and f"limit of {LIMIT} bytes" in json.loads(body)["error"]
    d.find_element(By.ID, "file").send_keys(str(site["root"] / "big.bmp"))
    _wait(d, lambda drv: "limit" in drv.find_element(By.ID, "status").text)
    assert d.find_element(By.ID, "status").get_attribute("class") == "error"
    assert d.find_elements(By.CSS_SELECTOR, "#results figure.hit") == []
