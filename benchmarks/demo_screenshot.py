"""Screenshot of `fclm demo` in headless Chromium (the picture in docs/serving.md).

Starts the demo on 127.0.0.1 (a free port), opens it in headless Chromium (Debian's chromium +
chromium-driver, through Selenium), loads an example scene, clicks an object, describes it, segments
the example's referring expression, and saves the page. Without --model it uses the tiny random
model of the tests (its texts are gibberish); with a trained model (e.g. the quickstart's) the
picture shows real answers.

    python benchmarks/demo_screenshot.py --out docs/img/demo.png [--model fclm-quickstart/model]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--model", help="FCLM model folder (default: the tests' tiny random model)")
    ap.add_argument("--example", type=int, default=0, help="example scene to load (0-5)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--teacher-forced", action="store_true", help="segment with the fixed answer 'Sure, [SEG].'")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fclm.data.masks import decode_rle
    from fclm.data.synthetic import generate_scenes
    from fclm.serve.app import ServerThread, create_app

    if args.model:
        from fclm.infer import FCLMPipeline

        pipe = FCLMPipeline.from_pretrained(args.model)
    else:
        from fclm.serve.testing import varied_tiny_pipeline

        pipe = varied_tiny_pipeline(0)
    scene = generate_scenes(args.example + 1, "test", seed=0)[args.example]  # the demo's example list
    m = decode_rle(scene.objects[0].mask)
    ys, xs = m.nonzero()
    k = len(ys) // 2
    px, py = int(xs[k]), int(ys[k])
    srv = ServerThread(create_app(pipe, demo=True)).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1040"):
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    js = d.execute_script
    try:
        d.get(srv.url + "/")
        W = WebDriverWait(d, 120)
        W.until(lambda d: d.find_elements(By.ID, f"ex-{args.example}"))
        d.find_element(By.ID, f"ex-{args.example}").click()
        W.until(lambda d: d.find_element(By.ID, "canvas").get_attribute("data-loaded") == "1")
        js(f"document.getElementById('max-tokens').value = {args.max_new_tokens}")
        c = d.find_element(By.ID, "canvas")
        s = c.size["width"] / scene.width
        ActionChains(d).move_to_element_with_offset(c, int(px * s - c.size["width"] / 2),
                                                    int(py * s - c.size["height"] / 2)).click().perform()
        if args.teacher_forced:
            d.find_element(By.ID, "teacher-forced").click()
        for button, task in (("btn-describe", "describe"), ("btn-segment", "segment")):
            d.find_element(By.ID, button).click()
            W.until(lambda d: js("return document.getElementById('status').textContent").startswith(f"{task} done")
                    or "failed" in js("return document.getElementById('status').textContent"))
            if button == "btn-describe":
                described = js("return document.getElementById('result-text').innerHTML")
        # show both answers: the description above the segmentation result
        js("const r = document.getElementById('result-text'); r.innerHTML = arguments[0] + r.innerHTML", described)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        d.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        d.quit()
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
