"""Screenshot of an eval report in headless Chromium (the picture in docs/report.png).

    gbrank quickstart -w /tmp/q
    gbrank run -c /tmp/q/gbrank.toml --set 'train.heads=["ranker", "ctr", "cvr"]'
    python docs/make_screenshot.py /tmp/q/runs/<run>/report.html docs/report.png

Needs Debian's chromium and chromium-driver, and selenium (the dev extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> None:
    page, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,900",
                "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1300, height)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    print(f"{out}: 1300 x {height}")


if __name__ == "__main__":
    main()
