"""End to end: headless Chromium drives ``lb serve``'s page as a person would.

Uploads a real photo from ../shared/data/photos, presses Protect, waits for the result, checks
the side-by-side preview and the download, saves a screenshot into the test's folder (and a copy
at /tmp/lb-web-screenshot.png), then checks that a bad file gets a readable message.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package
(``scripts/install-browser.sh`` installs them; CI runs it); skips with the reason when absent.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flask")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (scripts/install-browser.sh)")

FAST = {"extractors": ("fan:weights=none,width=16,landmarks=68,resolution=64",), "steps": 2,
        "check_compression": False}
SCREENSHOT_COPY = Path("/tmp/lb-web-screenshot.png")


def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: Debian's chromium and chromium-driver are needed "
                    "(scripts/install-browser.sh installs them)")
    return chromium, driver


def _protect_options() -> dict[str, Any]:
    """The demonstration FAN when its weights are installed (a meaningful screenshot), else a
    small random one (the page's plumbing is what is tested)."""
    from lbcore.errors import LBError
    from lbcore.plugins import get_plugin_manager

    try:
        get_plugin_manager().build("extractors", "fan-demo")
    except (LBError, KeyError):
        return FAST
    return {"extractors": ("fan-demo",), "steps": 4, "check_compression": False}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """``lb serve``'s app on a free loopback port, in a thread of this process."""
    from lbcore.apps.web import create_app, make_server

    app = create_app(protect_options=_protect_options(), temp_root=tmp_path)
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.port}/", app
    finally:
        srv.shutdown()
        srv.server_close()
        app.extensions["lb_store"].close()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
                "--metrics-recording-only", "--password-store=basic", "--window-size=1280,1800",
                f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    # an explicit driver path: Selenium Manager never tries to download one
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield drv, downloads
    finally:
        drv.quit()


def _decode(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert arr is not None, f"{path} is not an image"
    return arr


def test_protect_a_photo_in_the_browser(shared: Path, server: tuple[str, Any], browser: tuple[Any, Path],
                                        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, app = server
    drv, downloads = browser
    photo = shared / "data" / "photos" / "obama.jpg"
    h, w = _decode(photo).shape[:2]

    drv.get(url)
    assert "Landmark Breaker" in drv.title
    protect = drv.find_element(By.ID, "protect")
    assert not protect.is_enabled()  # nothing chosen yet
    drv.find_element(By.ID, "files").send_keys(str(photo))
    chosen = drv.find_element(By.ID, "chosen").text
    assert "obama.jpg" in chosen and "kB" in chosen
    drv.find_element(By.CSS_SELECTOR, "input[name=strength][value=low]").click()
    assert protect.is_enabled()
    protect.click()

    # the progress indicator shows while the job runs
    WebDriverWait(drv, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                 in ("running", "done", "failed"))
    state = WebDriverWait(drv, 180, poll_frequency=0.3).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "failed")
        and d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
    assert state == "done", drv.find_element(By.ID, "message").text
    assert not drv.find_element(By.ID, "progress-box").is_displayed()

    card = drv.find_element(By.CSS_SELECTOR, "#result-list .result")
    assert card.find_element(By.CSS_SELECTOR, ".r-name").text == "obama.jpg"
    assert card.find_element(By.CSS_SELECTOR, ".badge").text in ("protected", "partly protected", "not enough")
    words = [li.text for li in card.find_elements(By.CSS_SELECTOR, ".r-faces li")]
    assert words and "of the eye distance" in words[0], words
    assert any("SSIM" in t for t in words)

    # the side-by-side: loaded, twice the photo's width (and below it the face at 1:1), labelled
    img = card.find_element(By.CSS_SELECTOR, "img.sbs-img")
    # (fetched with the page's session header, then shown from a blob: URL)
    WebDriverWait(drv, 20).until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    natural = drv.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert natural[0] == 2 * w and natural[1] > h
    assert img.size["width"] > 400  # shown, not collapsed
    labels = card.find_element(By.CSS_SELECTOR, ".sbs-labels").text
    assert "Original" in labels and "Protected" in labels

    close = card.find_element(By.CSS_SELECTOR, ".face .closeup img")
    WebDriverWait(drv, 20).until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", close))
    assert drv.execute_script("return arguments[0].naturalWidth", close) > 0

    drv.execute_script("window.scrollTo(0, document.getElementById('results').offsetTop - 20)")
    time.sleep(0.3)
    shot = tmp_path / "lb-web-page.png"
    assert drv.save_screenshot(str(shot))
    with contextlib.suppress(OSError):  # a convenience for a person looking; tmp_path has the original
        shutil.copy(shot, SCREENSHOT_COPY)

    # the download button saves the protected photo
    link = card.find_element(By.CSS_SELECTOR, "a.r-download")
    assert link.get_attribute("download") == "obama-protected.jpg"  # a JPEG stays a JPEG
    link.click()
    target = downloads / "obama-protected.jpg"
    deadline = time.monotonic() + 30
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert target.exists(), sorted(p.name for p in downloads.iterdir())
    protected = _decode(target)
    assert protected.shape == (h, w, 3)
    diff = protected.astype(float) - _decode(photo).astype(float)
    psnr = 10 * np.log10(255.0**2 / max(float((diff**2).mean()), 1e-12))
    print(f"whole-photo PSNR of the download: {psnr:.1f} dB, max change {np.abs(diff).max():.0f}")
    assert np.abs(diff).max() > 0 and psnr >= 38  # strength low: a similarity floor, not an L-inf one
    # one file: no zip button
    assert not drv.find_element(By.ID, "zip").is_displayed()

    # a bad file gets a readable message, not a stack trace
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    drv.find_element(By.ID, "files").send_keys(str(bad))
    drv.find_element(By.ID, "protect").click()
    message = drv.find_element(By.ID, "message")
    WebDriverWait(drv, 20).until(lambda d: message.is_displayed())
    assert "notes.txt" in message.text  # the reason stands beside the file's name
    rejected = drv.find_element(By.CSS_SELECTOR, "#chosen li.rejected")
    assert "notes.txt: not a photo or video this page takes" in rejected.text
    assert "Traceback" not in drv.page_source

    # "Delete my files" empties the private folder
    store = app.extensions["lb_store"]
    assert any(p.is_file() for p in store.root.rglob("*"))
    drv.find_element(By.ID, "clear").click()
    WebDriverWait(drv, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                 == "cleared")
    deadline = time.monotonic() + 30  # a job stopped by the clear finishes its step first
    while any(p.is_file() for p in store.root.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.is_file() for p in store.root.rglob("*")), [str(p) for p in store.root.rglob("*")]


def test_bad_file_reported_in_place_remove_buttons_and_details(shared: Path, server: tuple[str, Any],
                                                               browser: tuple[Any, Path], tmp_path: Path) -> None:
    """Issue 17: a bad file does not stop the good ones and is reported beside its name; a file can
    be removed before Protect; the technical notes sit behind a Details toggle."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    drv, _ = browser
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    shutil.copy(shared / "data" / "photos" / "obama-240p.jpg", tmp_path / "extra.jpg")
    drv.get(url)
    photo = shared / "data" / "photos" / "obama-240p.jpg"
    drv.find_element(By.ID, "files").send_keys("\n".join([str(photo), str(bad), str(tmp_path / "extra.jpg")]))
    items = drv.find_elements(By.CSS_SELECTOR, "#chosen li")
    assert len(items) == 3
    items[2].find_element(By.CSS_SELECTOR, "button.remove").click()  # extra.jpg
    names = [li.text for li in drv.find_elements(By.CSS_SELECTOR, "#chosen li")]
    assert len(names) == 2 and not any("extra.jpg" in n for n in names)
    drv.find_element(By.ID, "protect").click()
    state = WebDriverWait(drv, 180, poll_frequency=0.3).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "failed")
        and d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
    assert state == "done", drv.find_element(By.ID, "message").text
    assert [c.text for c in drv.find_elements(By.CSS_SELECTOR, "#result-list .r-name")] == ["obama-240p.jpg"]
    rejected = drv.find_element(By.CSS_SELECTOR, "#chosen li.rejected")
    assert "notes.txt: not a photo or video this page takes" in rejected.text
    details = drv.find_element(By.ID, "details")
    notes_text = drv.find_element(By.ID, "notes").text
    assert "not used" not in notes_text  # developer notes are not in the plain-words summary
    if drv.find_elements(By.CSS_SELECTOR, "#details-list li"):
        assert details.is_displayed() and details.get_attribute("open") is None  # folded by default
