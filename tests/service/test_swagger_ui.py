"""The Swagger page in headless Chromium: Try it out on POST /prompt, Execute, see a 200."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.service.conftest import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                       reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver)"),
]


@pytest.fixture()
def live_server(make_app):
    from werkzeug.serving import make_server

    app = make_app()
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_try_it_out_on_prompt(live_server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2000", "--no-proxy-server"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(f"{live_server}/swagger/index.html")
        wait = WebDriverWait(driver, 30)
        block = wait.until(ec.presence_of_element_located((By.ID, "operations-generate-post_prompt")))
        block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(lambda d: block.find_elements(By.CSS_SELECTOR, "button.try-out__btn"))
        block.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
        body = wait.until(lambda d: block.find_element(By.CSS_SELECTOR, "textarea.body-param__text"))
        assert "oil price" in body.get_attribute("value")
        block.find_element(By.CSS_SELECTOR, "button.execute").click()
        status = wait.until(lambda d: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"))
        wait.until(lambda d: status.text.strip() != "")
        assert status.text.strip().startswith("200"), status.text
        text = block.find_element(By.CSS_SELECTOR, ".live-responses-table").text
        assert '"response":' in text, text
    finally:
        driver.quit()
