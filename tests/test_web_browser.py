"""End to end in a real headless browser: `immunofold serve` on a free port, Debian's Chromium via Selenium.

Needs /usr/bin/chromium + /usr/bin/chromedriver (`.ci/install-browser`) and the 3D viewer
(`immunofold serve --install-assets`). A missing browser or viewer FAILS this test (CI installs both);
set IMMUNOFOLD_SKIP_BROWSER=1 to skip it on a machine without them. With IMMUNOFOLD_SAVE_SCREENSHOT=1
the screenshot is also copied to docs/web.png (the README shows it).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import pytest

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT, free_port, start_serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOT_COPY = os.path.join(REPO, "docs", "web.png")
DEV_WEIGHTS = "/tmp/devweights"
CHROMIUM = os.environ.get("IMMUNOFOLD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMMUNOFOLD_CHROMEDRIVER", "/usr/bin/chromedriver")

if os.environ.get("IMMUNOFOLD_SKIP_BROWSER") == "1":
    pytest.skip("IMMUNOFOLD_SKIP_BROWSER=1", allow_module_level=True)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        rows.append(bytes(line[j] for j in range(stride) if bpp == 3 or j % 4 != 3))
        previous = line
    return width, height, rows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`immunofold serve` in a subprocess on a free loopback port, with its own job database."""
    from immunofold.web.assets import INSTALL_COMMAND, find_viewer
    from immunofold.weights import WEIGHTS_ENV, packaged_weight_files

    assert find_viewer() is not None, f"the 3D viewer is not installed: run `{INSTALL_COMMAND}`"
    env = dict(os.environ)
    if not packaged_weight_files() and os.path.isdir(DEV_WEIGHTS):
        env[WEIGHTS_ENV] = DEV_WEIGHTS
    db = tmp_path_factory.mktemp("web") / "jobs.sqlite"
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "w+")
    process, url = start_serve(db, log, env=env, cwd=REPO)
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by Selenium through /usr/bin/chromedriver (no downloads)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    assert not missing, f"{', '.join(missing)} not found: run .ci/install-browser (apt-get install chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1400,2200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=45.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(condition)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; page errors: {driver.get_log('browser')[-5:]}")


def test_bad_input_is_shown_next_to_its_field(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.ID, "heavy").send_keys("EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS")
    browser.find_element(By.ID, "light").send_keys("DIQMTQSPSS<img src=x>")
    browser.find_element(By.ID, "submit").click()
    message = wait_for(browser, "return document.getElementById('error-light').textContent", 15, "the inline error")
    assert message.startswith("model light chain: invalid letters")
    assert browser.find_element(By.ID, "light").get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "error-heavy").text == ""
    assert browser.find_elements(By.CSS_SELECTOR, "#error-light img") == []  # shown as text, not HTML


def test_trastuzumab_end_to_end_renders_the_structure(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys("trastuzumab <b>Fv</b>")
    for field, sequence in (("heavy", TRASTUZUMAB_HEAVY), ("light", TRASTUZUMAB_LIGHT)):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(sequence)
    assert not browser.find_element(By.ID, "refine").is_selected()
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, "return document.getElementById('viewer').dataset.rendered === 'true'", 60, "the 3D viewer")
    time.sleep(0.5)  # let the WebGL frame reach the screen

    assert browser.find_element(By.ID, "result-title").text == "trastuzumab <b>Fv</b>"  # escaped, as typed
    assert browser.find_elements(By.CSS_SELECTOR, "#result-title b") == []
    assert "mean predicted error" in browser.find_element(By.ID, "result-summary").text
    assert browser.find_element(By.CSS_SELECTOR, "#viewer").get_attribute("data-labels") == "6"  # H/L CDR1-3
    assert "Predicted error (Å)" in browser.find_element(By.CSS_SELECTOR, ".legend").text
    assert browser.find_element(By.ID, "developability-title").text == "Developability (TAP)"
    flags = browser.find_elements(By.CSS_SELECTOR, "#developability-table tbody .flag")
    assert len(flags) == 5 and {f.get_attribute("class") for f in flags} <= {"flag flag-green", "flag flag-amber", "flag flag-red"}
    plots = browser.find_elements(By.CSS_SELECTOR, "#error-plots svg")
    assert len(plots) == 2 and len(browser.find_elements(By.CSS_SELECTOR, "#error-plots rect.cdr")) == 6
    rows = browser.find_elements(By.CSS_SELECTOR, "#numbering-table tbody tr")
    assert len(rows) == len(TRASTUZUMAB_HEAVY) + len(TRASTUZUMAB_LIGHT)
    assert rows[0].text.split()[:3] == ["H", "1", "E"]
    pdb_link = browser.find_element(By.ID, "download-pdb").get_attribute("href")
    cif_link = browser.find_element(By.ID, "download-cif").get_attribute("href")
    assert pdb_link.endswith("/model.pdb") and cif_link.endswith("/model.cif")
    with urllib.request.urlopen(pdb_link) as response:
        assert b"PREDICTED ERROR PER RESIDUE IN ANGSTROM" in response.read()

    # The WebGL canvas has drawn a coloured model: many non-white pixels, several error colours.
    canvas = browser.find_element(By.CSS_SELECTOR, "#viewer canvas")
    width, height, pixels = png_pixels(canvas.screenshot_as_png)
    coloured, colours = 0, set()
    for row in pixels:
        for i in range(0, len(row), 3):
            rgb = row[i : i + 3]
            if min(rgb) < 235:
                coloured += 1
                colours.add((rgb[0] >> 4, rgb[1] >> 4, rgb[2] >> 4))
    assert coloured > 0.03 * width * height, f"viewer looks blank: {coloured} coloured pixels of {width * height}"
    assert len(colours) > 10

    screenshot = tmp_path / "web_screenshot.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("IMMUNOFOLD_SAVE_SCREENSHOT") == "1":
        os.makedirs(os.path.dirname(SCREENSHOT_COPY), exist_ok=True)
        shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"screenshot: {screenshot}")


# A nanobody with a long CDR3 (IMGT insertions 111A...) whose unrefined model has flagged TNP patches.
NANOBODY = ("QVQLQESGGGSVQAGGSLRLSCAASGYTYRDYYMGWFRQAPGREREGVASIYTRGSREGSTRYSSSVEGRFTITLDTAKNTLYLQMNSLKPEDTAMYYCAA"
            "DDRTWLPRVQLGGPRENEYNYWGQGTQVTVSS")


def test_developability_panel_and_flagged_patches_in_3d(server, browser):
    """The panel lists every TNP metric with the job's flag; each residue of a flagged patch is drawn as sticks."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.CSS_SELECTOR, "input[name=kind][value=nanobody]").click()
    browser.find_element(By.ID, "heavy").send_keys(NANOBODY)
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, "return document.getElementById('viewer').dataset.rendered === 'true'", 60, "the 3D viewer")
    job_id = browser.execute_script("return location.hash").split("=")[1]
    with urllib.request.urlopen(f"{server}/api/jobs/{job_id}") as response:
        profile = json.loads(response.read())["result"]["developability"]
    patches = [m for m in profile["metrics"].values() if m["flag"] != "green" and m["name"] in ("psh", "ppc", "pnc")]
    assert patches, "this nanobody was chosen for a flagged patch; pick another if the model changed"

    assert browser.find_element(By.ID, "developability-title").text == "Developability (TNP)"
    assert "mean over the four ensemble members" in browser.find_element(By.ID, "developability-hint").text
    assert "unrefined, geometry cleaned" in browser.find_element(By.ID, "result-summary").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#developability-table tbody tr")
    assert [(r.get_attribute("data-metric"), r.get_attribute("data-flag")) for r in rows] == [
        (name, metric["flag"]) for name, metric in profile["metrics"].items()]
    for metric in patches:
        row = browser.find_element(By.CSS_SELECTOR, f"#developability-table tr[data-metric={metric['name']}]")
        assert f"{len(metric['residues'])} residues" in row.text
        assert row.find_elements(By.CSS_SELECTOR, f".swatch-{metric['name']}")
    highlighted = browser.find_element(By.ID, "viewer").get_attribute("data-highlighted")
    assert highlighted == str(sum(len(m["residues"]) for m in patches))  # every residue found in the model
    inserted = [r for r in profile["metrics"]["cdr3_length"]["residues"] if r["icode"]]
    for residue in (patches[0]["residues"][0], inserted[0]):  # the page's selection picks exactly that residue
        picked = browser.execute_script(
            "return [...new Set(viewer.selectedAtoms(residueSelection(arguments[0]))"
            ".map((a) => `${a.chain}${a.resi}${a.icode.trim()}`))];", residue)
        assert picked == [f"{residue['chain']}{residue['resi']}{residue['icode']}"]


def test_batch_upload_shows_progress_then_a_zip(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    upload = tmp_path / "two.fasta"
    upload.write_text(
        f">tz|H\n{TRASTUZUMAB_HEAVY}\n>tz|L\n{TRASTUZUMAB_LIGHT}\n>junk\n{'ACDEFGHIKLMNPQRSTVWY' * 5}\n"
    )
    browser.get(server + "/")
    browser.find_element(By.ID, "tab-batch").click()
    browser.find_element(By.ID, "batch-file").send_keys(str(upload))
    browser.find_element(By.ID, "batch-submit").click()
    wait_for(browser, "return !document.getElementById('batch-result').hidden", 60, "the batch result")
    assert browser.find_element(By.ID, "batch-summary").text == "1 receptor(s) predicted, 1 failed."
    assert browser.find_element(By.ID, "batch-progress").is_displayed() is False
    link = browser.find_element(By.ID, "download-zip").get_attribute("href")
    with urllib.request.urlopen(link) as response:
        assert response.headers["Content-Type"] == "application/zip" and response.read(2) == b"PK"
    cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#batch-failures tbody td")]
    assert cells[0] == "junk"


def test_another_origin_cannot_submit_jobs(server, browser, tmp_path):
    """A page of another web server on this machine uploads a batch as any hostile page can (no-cors
    multipart POST, the issue's attack); the server refuses it and no job appears. A same-origin POST
    without the page's token is refused too."""
    fasta = f">cross_site\n{TRASTUZUMAB_HEAVY}\n"
    (tmp_path / "evil.html").write_text(
        "<!doctype html><title>loading</title><script>"
        f"const form = new FormData(); form.append('file', new Blob([{json.dumps(fasta)}]), 'x.fasta');"
        f"fetch('{server}/api/batch', {{method: 'POST', mode: 'no-cors', body: form}})"
        ".then(() => { document.title = 'sent'; }, (e) => { document.title = String(e); });"
        "</script>"
    )
    port = free_port()
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        before = json.loads(urllib.request.urlopen(f"{server}/api/jobs").read())["jobs"]
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/evil.html", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        browser.get(f"http://127.0.0.1:{port}/evil.html")
        assert wait_for(browser, "return document.title !== 'loading' && document.title", 15, "the hostile POST") == "sent"
    finally:
        other.terminate()
        other.wait(10)
    time.sleep(0.5)
    after = json.loads(urllib.request.urlopen(f"{server}/api/jobs").read())["jobs"]
    assert [job["id"] for job in after] == [job["id"] for job in before]
    browser.get(server + "/")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const form = new FormData(); form.append('file', new Blob([arguments[0]]), 'x.fasta');"
        "fetch('/api/batch', {method: 'POST', body: form}).then((r) => done(r.status), (e) => done(String(e)));",
        fasta,
    )
    assert status == 403
