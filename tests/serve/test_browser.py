"""The page in a real browser: Debian's Chromium, headless, driven by Playwright, against uvicorn
on 127.0.0.1. Not skipped when the browser is missing: it fails saying how to install it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from serving import ServerThread, image_bytes

from detlab.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: the browser test needs Debian's Chromium (sudo apt-get install -y chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_page_detects_draws_and_looks_inside(browser, trained_run, tmp_path):
    upload = tmp_path / "shapes.png"
    upload.write_bytes(image_bytes(160, 120))
    with ServerThread(create_app([trained_run / "best"], device="cpu")) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        requests = []
        page.on("request", lambda request: requests.append(urlsplit(request.url)))
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        page.wait_for_selector('body[data-drawn][data-pending="0"]')  # the first sample, detected
        assert page.locator("#model option").all_inner_texts() == ["shapes (faster_rcnn)"]

        with page.expect_response("**/api/detect"):
            page.fill("#score-threshold", "0")  # the sample again, at 0
        page.wait_for_selector('body[data-pending="0"]')
        with page.expect_response("**/api/detect"):
            page.set_input_files("#file", str(upload))
        page.wait_for_selector('body[data-state="ready"][data-pending="0"]')
        answer = httpx.post(
            server.url + "/api/detect",
            files={"image": ("shapes.png", upload.read_bytes(), "image/png")},
            data={"score_threshold": "0"},
            timeout=60,
        ).json()
        rows = page.locator("#detections tr")
        assert rows.count() == len(answer["detections"]) > 0
        assert (
            rows.first.locator("td").nth(1).inner_text().strip() == answer["detections"][0]["category_name"]
        )
        assert page.locator("#status").inner_text().startswith(f"{len(answer['detections'])} detection")
        assert "160 × 120 px" in page.locator("#timing").inner_text()
        assert page.locator("#canvas").evaluate("canvas => canvas.width") > 0

        with page.expect_response("**/api/detect"):
            page.click("#inside-toggle")
        page.wait_for_selector("#stages li")
        stages = page.locator("#stages li").all_inner_texts()
        assert len(stages) == 5 and all(" ms" in stage for stage in stages) and "RPN" in " ".join(stages)
        # the RPN's proposals (shown first), then the anchors of one location
        assert (
            page.locator("#views button").count() == 2
            and "proposals" in page.locator("#view-title").inner_text()
        )
        page.locator("#views button").nth(1).click()
        assert "anchors of one location" in page.locator("#view-title").inner_text()
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)

        assert not errors, errors
        # Every request went to this server; the rest are the page's own blob: and data: URLs.
        assert {url.hostname for url in requests if url.scheme in ("http", "https", "ws", "wss")} == {
            "127.0.0.1"
        }
        assert {url.scheme for url in requests} <= {"http", "blob", "data"}, [
            url.geturl()[:80] for url in requests
        ]
    assert (tmp_path / "serve.png").stat().st_size > 10_000


def test_the_page_works_with_a_token_from_the_url_fragment_or_its_form(browser, untrained):
    from detlab.serve.access import Access

    token = "page-token-1"
    app = create_app({"yolov1": untrained["yolov1"]}, access=Access(token=token))
    with ServerThread(app) as server:
        page = browser.new_page()
        page.goto(f"{server.url}/#token={token}")
        page.wait_for_selector('body[data-drawn][data-pending="0"]')  # the first sample, detected
        assert "#" not in page.url  # the token left the address bar
        assert page.locator("#token-form").is_hidden()

        asked = browser.new_page()  # a tab without the token: the page asks for it
        asked.goto(server.url + "/")
        asked.wait_for_selector("#token-form:not([hidden])")
        assert "token" in asked.locator("#status").inner_text()
        asked.fill("#token", token)
        asked.click("#token-form button")
        asked.wait_for_selector('body[data-drawn][data-pending="0"]')
        assert asked.locator("#model option").all_inner_texts() == ["yolov1 (yolov1)"]


def test_the_errors_view_shows_the_chosen_models_errors_and_galleries(browser, trained_run, synthetic_root):
    app = create_app([trained_run / "best"], device="cpu", errors_data=f"voc:{synthetic_root}")
    with ServerThread(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        page.wait_for_selector("#errors:not([hidden]) #error-rows tr")
        view = httpx.get(server.url + "/api/errors", timeout=30).json()["models"]["shapes"]
        rows = page.locator("#error-rows tr")
        assert rows.count() == 8
        missed = page.locator('#error-rows tr[data-type="missed"] td')
        assert missed.nth(2).inner_text() == str(view["counts"]["missed"])
        assert missed.nth(3).inner_text() == f"{100 * view['dap']['missed']:.1f}"
        page.wait_for_function("document.querySelectorAll('#error-figures img').length === 2")
        page.wait_for_function(
            "[...document.querySelectorAll('#error-figures img')].every(image => image.naturalWidth > 0)"
        )
        kind = next(iter(view["galleries"]))
        page.click(f'#error-rows tr[data-type="{kind}"] button')
        page.wait_for_selector(f'#gallery:not([hidden]) img[data-type="{kind}"]')
        page.wait_for_function("document.getElementById('gallery-image').naturalWidth > 0")
        assert "the ground truth" in page.locator("#gallery-caption").inner_text()
        assert errors == []
