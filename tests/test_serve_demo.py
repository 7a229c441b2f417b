"""`fclm demo` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Loads the page, uploads an image, selects a region (point, box, paint), runs describe / segment /
grounded caption and checks the texts (against the pipeline's own answers) and the overlay image.
Skipped, with the reason, where Chromium, its driver or Selenium is missing (``.ci/run`` installs them).
"""
import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_TEXTS, make_sample

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if p), None)
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="headless Chromium not found: apt-get install chromium chromium-driver")

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def pipe():
    from fclm.serve.testing import varied_tiny_pipeline

    return varied_tiny_pipeline(seed=0, texts=TINY_TEXTS)


@pytest.fixture(scope="module")
def server(pipe):
    from fclm.serve.app import ServerThread, create_app

    srv = ServerThread(create_app(pipe, demo=True)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1300,1000",
              "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts, service=Service(DRIVER))
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def js(d, script):
    return d.execute_script(script)


def wait_result(d, task):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, 120).until(lambda d: js(d, "return document.getElementById('result').dataset.state") in
                                ("done", "error") and js(d, "return document.getElementById('status').textContent")
                                .startswith(task))
    state = js(d, "return document.getElementById('result').dataset.state")
    assert state == "done", js(d, "return document.getElementById('status').textContent")
    assert js(d, "return document.getElementById('result').dataset.task") == task
    src = js(d, "return document.getElementById('overlay').src")
    assert src.startswith("data:image/png;base64,")
    from selenium.webdriver.support.ui import WebDriverWait as W

    W(d, 30).until(lambda d: js(d, "return document.getElementById('overlay').naturalWidth") == 128)
    return js(d, "return Array.from(document.querySelectorAll('#result-text > div')).map(e => e.textContent)")


def canvas_click(d, x, y, drag_to=None):
    """Mouse on the canvas at image pixel (x, y) (the image is drawn at 4x), optionally dragged."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    c = d.find_element(By.ID, "canvas")
    w, h = c.size["width"], c.size["height"]
    s = w / 128
    a = ActionChains(d).move_to_element_with_offset(c, int(x * s - w / 2), int(y * s - h / 2)).click_and_hold()
    if drag_to:
        a = a.move_by_offset(int((drag_to[0] - x) * s), int((drag_to[1] - y) * s))
    a.release().perform()


def test_demo_in_headless_chromium(server, browser, pipe, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fclm.serve.schemas import point_region

    d = browser
    arr = np.asarray(make_sample().image.open()).copy()
    arr[10:40, 10:50] = (200, 30, 30)  # a flat red rectangle to click on
    img = Image.fromarray(arr)
    path = tmp_path / "upload.png"
    img.save(path)
    d.get(server.url + "/")
    assert d.title == "fclm demo"
    WebDriverWait(d, 60).until(lambda d: d.find_elements(By.ID, "ex-5"))  # example scenes listed
    d.find_element(By.ID, "upload").send_keys(str(path))
    WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "canvas").get_attribute("data-loaded") == "1")
    assert d.find_element(By.ID, "status").text == "image 128x96 loaded"
    js(d, f"document.getElementById('max-tokens').value = {MAX_TOKENS}")

    # click a point on the top-left rectangle → label + description of that object, region outlined
    canvas_click(d, 30, 25)
    assert d.find_element(By.ID, "region-info").text.startswith("point (30, 25)")
    d.find_element(By.ID, "btn-describe").click()
    lines = wait_result(d, "describe")
    region = point_region(img, 30, 25)
    assert region.sum() == 30 * 40 and region[10:40, 10:50].all()  # the clicked rectangle
    want_label = pipe.classify(img, [region])[0]
    want_desc = pipe.describe(img, [region], max_new_tokens=MAX_TOKENS)[0].text
    assert lines == [f"label: {want_label or '(empty)'}", f"description: {want_desc or '(empty)'}"]

    # drag a box, then type a phrase with <region> → masks overlaid, [SEG] coloured
    d.find_element(By.ID, "mode-box").click()
    canvas_click(d, 70, 50, drag_to=(120, 90))
    assert d.find_element(By.ID, "region-info").text == "box [70, 50, 120, 90]"
    box = d.find_element(By.ID, "seg-text")
    box.clear()
    box.send_keys("Please segment the object with the colour of <region>.")
    d.find_element(By.ID, "btn-segment").click()
    lines = wait_result(d, "segment")
    want = pipe.segment(img, "Please segment the object with the colour of <region>.", regions=[[70, 50, 120, 90]],
                        max_new_tokens=MAX_TOKENS)
    assert lines == [f"answer: {want.text or '(empty)'}", f"masks: {len(want.masks)}"]
    box.clear()
    box.send_keys("the red circle")
    d.find_element(By.ID, "btn-segment").click()
    lines = wait_result(d, "segment")
    assert lines[0] == f"answer: {pipe.segment(img, 'the red circle', max_new_tokens=MAX_TOKENS).text or '(empty)'}"

    # paint a stroke → a painted region is described
    d.find_element(By.ID, "mode-paint").click()
    canvas_click(d, 80, 60, drag_to=(100, 70))
    assert d.find_element(By.ID, "region-info").text == "painted region"
    d.find_element(By.ID, "btn-describe").click()
    lines = wait_result(d, "describe")
    assert lines[0].startswith("label: ") and lines[1].startswith("description: ")

    # grounded caption
    d.find_element(By.ID, "btn-ground").click()
    lines = wait_result(d, "ground")
    want = pipe.ground(img, max_new_tokens=MAX_TOKENS)
    assert lines == [f"caption: {want.caption or '(empty)'}", f"phrases: {len(want.phrases)}"]
    overlay = js(d, "return document.getElementById('overlay').src")
    ov = np.asarray(Image.open(io.BytesIO(base64.b64decode(overlay.split(",", 1)[1]))).convert("RGB"))
    assert ov.shape == (96, 128, 3)
    assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []
