"""GET / in a real headless browser (Debian's chromium driven by Selenium through chromedriver): the page loads
the checkpoint's digits, a person picks digits, a count and a sampler and clicks Generate, and each clip gets
an audio element holding a decodable WAV of the clip's length (decoded by the browser's own Web Audio) and a
drawn log-Mel spectrogram. The JSON answer behind it holds the bytes of the WAV answer."""
import base64
import os
import shutil

import httpx
import pytest
from test_serve import _start, _stop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if os.environ.get("CI") != "true" and not (CHROMIUM and DRIVER):  # CI installs both (.ci/run): there it must run
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    url, proc = _start(tiny_checkpoint, "--max-clips", "4")
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


DECODE = """
const done = arguments[arguments.length - 1];
Promise.all([...document.querySelectorAll('#clips audio')].map(async (a) => {
  const bytes = await (await fetch(a.src)).arrayBuffer();
  const ctx = new OfflineAudioContext(1, 1, 16000);
  const buf = await ctx.decodeAudioData(bytes.slice(0));
  const head = String.fromCharCode(...new Uint8Array(bytes.slice(0, 4)));
  return {name: a.dataset.name, length: buf.length, rate: buf.sampleRate, head: head, size: bytes.byteLength};
})).then(done, (e) => done({error: String(e)}));
"""

CANVAS = """
return [...document.querySelectorAll('#clips canvas')].map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const values = new Set(); for (let i = 0; i < d.length; i += 4 * 97) values.add(d[i] + 256 * d[i + 1]);
  return {width: c.width, height: c.height, colours: values.size};
});
"""


def test_a_person_generates_digits_and_gets_playable_clips_with_spectrograms(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    boxes = {b.get_attribute("value"): b for b in browser.find_elements(By.NAME, "digit")}
    assert sorted(boxes) == ["1", "7"]  # the tiny checkpoint's digits, from /info
    if not boxes["7"].is_selected():
        boxes["7"].click()  # 1 is checked by default: now 1 and 7
    count = browser.find_element(By.ID, "count")
    count.clear()
    count.send_keys("2")
    Select(browser.find_element(By.ID, "sampler")).select_by_value("euler_ancestral")
    browser.find_element(By.ID, "generate").click()
    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#clips audio")) == 4)
    decoded = browser.execute_async_script(DECODE)
    assert not isinstance(decoded, dict), decoded
    assert sorted(c["name"] for c in decoded) == ["1_0", "1_1", "7_0", "7_1"]
    for clip in decoded:  # 0.72 s at 16 kHz, a RIFF/WAVE file the browser decodes
        assert clip["head"] == "RIFF" and clip["rate"] == 16000 and clip["length"] == 11520, clip
    canvases = browser.execute_script(CANVAS)
    assert len(canvases) == 4 and all(c["width"] == 72 * 4 and c["height"] == 80 * 4 and c["colours"] > 20
                                      for c in canvases), canvases
    assert "4 clip(s)" in browser.find_element(By.ID, "status").text


def test_the_page_shows_a_refused_request_as_an_error(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for box in browser.find_elements(By.NAME, "digit"):
        if not box.is_selected():
            box.click()  # both digits, 3 each: 6 clips, over the server's --max-clips 4
    count = browser.find_element(By.ID, "count")
    count.clear()
    count.send_keys("3")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 60).until(lambda d: "Error" in d.find_element(By.ID, "status").text)
    assert "at most 4" in browser.find_element(By.ID, "status").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#clips audio")


def test_the_json_answer_holds_the_bytes_of_the_wav_answer(server):
    body = {"digit": 7, "n": 1, "seed": 4, "nfe": 3}
    wav = httpx.post(f"{server}/generate", json=body, timeout=120)
    js = httpx.post(f"{server}/generate", json={**body, "format": "json"}, timeout=120).json()
    assert wav.status_code == 200 and base64.b64decode(js["clips"][0]["wav"]) == wav.content
    assert len(js["clips"][0]["mel"]) == 80 and len(js["clips"][0]["mel"][0]) == 72
    assert httpx.post(f"{server}/generate", json={**body, "format": "mp3"}, timeout=30).status_code == 422


def test_the_openapi_schema_states_the_request_limits(server):
    schema = httpx.get(f"{server}/openapi.json", timeout=30).json()
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert fields["n"]["maximum"] == 4 and fields["n"]["minimum"] == 1  # --max-clips 4
    assert fields["seed"]["maximum"] == pytest.approx(2 ** 63 - 1)  # a JSON number
    nfe = next(s for s in fields["nfe"]["anyOf"] if "maximum" in s)
    guidance = fields["guidance"]
    assert nfe["maximum"] == 100 and guidance["maximum"] == 100 and guidance["minimum"] == 0
    assert set(fields["format"]["enum"]) == {"wav", "json"}
    assert "4 clips per request" in schema["info"]["description"]
