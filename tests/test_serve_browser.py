"""The page of `unclip serve` in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): it loads from a real `unclip serve` process, an image is uploaded, a mask is painted on the
canvas with the mouse, an edit runs on the bundled `shapes` model, the result shows in the gallery, and
every pixel the brush did not touch is the input's, bit for bit.

Without Chromium this skips, saying why, unless UNCLIP_REQUIRE_BROWSER=1 (CI) makes that a failure.
UNCLIP_SERVE_SCREENSHOT=docs/serve.png also saves a screenshot of the page (the README's).
"""

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from test_serve_api import free_port, start_server, wait_until_up

REQUIRE = os.environ.get("UNCLIP_REQUIRE_BROWSER") == "1"
BRUSH = 40  # image pixels
STROKES = [((150, 96), (226, 96)), ((150, 128), (226, 128)), ((150, 160), (226, 160))]  # image coordinates
STEPS = {"prior_steps": "2", "decoder_steps": "4", "sr_steps": "2"}


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        return "no Chromium browser on PATH (apt-get install chromium chromium-driver)"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if REQUIRE:
            pytest.fail(f"UNCLIP_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(f"browser test skipped: {why}; set UNCLIP_REQUIRE_BROWSER=1 to make this a failure")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
                "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`unclip serve` with the bundled model (an empty UNCLIP_HOME), on a free port."""
    root = tmp_path_factory.mktemp("serve")
    home, out = root / "home", root / "out"
    home.mkdir()
    port = free_port()
    proc = start_server(home, out, port)
    try:
        wait_until_up(proc, port, limit=300)
        yield f"http://127.0.0.1:{port}", out
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def picture(path: Path) -> np.ndarray:
    """256 px, the shapes world's look: a light background, a large blue square on the left."""
    im = Image.new("RGB", (256, 256), (235, 235, 235))
    ImageDraw.Draw(im).rectangle([24, 72, 112, 160], fill=(40, 80, 220))
    im.save(path)
    return np.asarray(im)


def wait_for(driver, script: str, limit: float = 60, *args):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for: {script}; page error: {driver.find_element('id', 'error').text!r}")


def paint(driver, canvas, strokes) -> None:
    """Drag the mouse along each stroke (image coordinates) over the displayed canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    scale = rect[0] / 256

    def offset(p):  # Selenium offsets are from the element's centre, in CSS pixels
        return round(p[0] * scale - rect[0] / 2), round(p[1] * scale - rect[1] / 2)

    for a, b in strokes:
        chain = ActionChains(driver).move_to_element_with_offset(canvas, *offset(a)).click_and_hold()
        (ax, ay), (bx, by) = offset(a), offset(b)
        for k in range(1, 5):
            chain = chain.move_to_element_with_offset(canvas, ax + (bx - ax) * k // 4, ay + (by - ay) * k // 4)
        chain.release().perform()


def painted_count(driver) -> int:
    return driver.execute_script(
        "const c = document.getElementById('edit-mask'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] >= 128; return n;")


def far_from_strokes(shape, strokes, margin: float) -> np.ndarray:
    """True where a pixel is farther than `margin` from every stroke segment."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    far = np.ones(shape, bool)
    for (ax, ay), (bx, by) in strokes:
        t = np.clip(((xs - ax) * (bx - ax) + (ys - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
        far &= np.hypot(xs - (ax + t * (bx - ax)), ys - (ay + t * (by - ay))) > margin
    return far


def test_an_edit_painted_in_the_browser_keeps_every_unpainted_pixel(server, browser, tmp_path):
    url, out = server
    driver = browser
    src = picture(tmp_path / "input.png")
    driver.get(url + "/")
    wait_for(driver, "return document.body.dataset.ready === '1'")
    driver.find_element("css selector", "[data-tab=edit]").click()
    driver.find_element("css selector", ".picker[data-slot=edit] input[type=file]").send_keys(str(tmp_path / "input.png"))
    wait_for(driver, "return document.getElementById('canvas-wrap').dataset.ready")
    driver.execute_script("document.getElementById('brush-size').value = arguments[0];", BRUSH)
    canvas = driver.find_element("id", "edit-mask")
    paint(driver, canvas, STROKES[:1])
    one = painted_count(driver)
    paint(driver, canvas, STROKES[1:])
    painted = painted_count(driver)
    assert 0 < one < painted < 256 * 256 // 2
    driver.find_element("id", "invert").click()  # invert, then undo: the mask is back as painted
    assert painted_count(driver) == 256 * 256 - painted
    driver.find_element("id", "undo").click()
    assert painted_count(driver) == painted

    form = driver.find_element("id", "edit")
    form.find_element("name", "prompt").send_keys("a large red circle")
    form.find_element("name", "seed").send_keys("1")
    driver.find_element("css selector", "#advanced summary").click()
    for name, value in STEPS.items():
        driver.find_element("css selector", f"#advanced-fields [name={name}]").send_keys(value)
    form.find_element("css selector", "button[type=submit]").click()
    name = wait_for(driver, "const c = document.querySelector('#gallery figure.card'); return c && c.dataset.name;", 300)
    wait_for(driver, "const i = document.querySelector('#gallery figure.card img'); return i.complete && i.naturalWidth === 256;")
    assert driver.find_element("css selector", "#queue .job").get_attribute("class") == "job done"

    result = np.asarray(Image.open(out / name).convert("RGB"))
    params = json.loads(Image.open(out / name).info["unclip"])
    assert params["mode"] == "edit" and params["prompt"] == "a large red circle" and params["decoder_steps"] == 4
    mask = np.asarray(Image.open(params["mask"]).convert("L")) >= 128  # the mask the page sent: white = edit
    assert mask.sum() == painted
    for (ax, ay), (bx, by) in STROKES:  # painted along every stroke, nowhere far from them
        assert mask[ay, ax] and mask[by, bx] and mask[ay, (ax + bx) // 2]
    assert not mask[far_from_strokes(mask.shape, STROKES, BRUSH / 2 + 2)].any()
    assert np.array_equal(result[~mask], src[~mask])  # every unpainted pixel unchanged
    assert np.abs(result[mask].astype(int) - src[mask]).mean() > 5  # and the painted area redrawn

    if shot := os.environ.get("UNCLIP_SERVE_SCREENSHOT"):
        save_screenshot(driver, Path(shot))


def save_screenshot(driver, path: Path, width: int = 960) -> None:
    """The page as it is, scaled to `width` and stored as a small palette PNG (for the README)."""
    from io import BytesIO

    driver.execute_script("window.scrollTo(0, 0);")
    im = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    im = im.resize((width, math.ceil(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_the_page_sends_each_verb_only_the_options_it_takes(server, browser):
    """Every advanced field filled in; the body the page builds for each verb holds exactly the options the server
    says that verb takes (RePaint's for edit only, the negative prompt's rescale for generate and edit)."""
    url, _ = server
    driver = browser
    driver.get(url + "/")
    wait_for(driver, "return document.body.dataset.ready === '1'")
    sent = driver.execute_script("""
        for (const input of document.querySelectorAll('#advanced-fields [name], #edit-options [name]')) {
          if (input.name === 'size') continue;
          input.value = input.tagName === 'SELECT' ? input.options[1].value : (input.placeholder || '1');
        }
        const out = {};
        for (const verb of ['generate', 'edit', 'vary', 'mix'])
          out[verb] = Object.keys(commonBody(document.getElementById(verb), verb)).sort();
        return out;""")
    info = json.loads(driver.execute_script(
        "const r = new XMLHttpRequest(); r.open('GET', '/api/info', false); r.send(); return r.responseText;"))
    for verb, keys in sent.items():
        expected = {o["name"] for o in info["options"] if verb in o["verbs"]} | {"num_images"}
        assert set(keys) == expected, verb
    assert "resample" in sent["edit"] and "resample" not in sent["generate"]
    assert "negative_rescale" in sent["generate"] and "negative_rescale" not in sent["vary"] + sent["mix"]


PAGE_STATE = """
    const shown = (e) => !e.closest('[hidden]');
    const fake = card({name: 'x.png', url: '/outputs/x.png', params: null});
    return {tabs: [...document.querySelectorAll('[role=tab]')].filter(shown).map((b) => b.dataset.tab),
            selected: document.querySelector('[role=tab][aria-selected=true]').dataset.tab,
            form: [...document.querySelectorAll('form[data-verb]')].filter(shown).map((f) => f.dataset.verb),
            prompt_mix: shown(document.querySelector('#vary [name=prompt_mix]')),
            sides: Object.fromEntries([...document.querySelectorAll('input[name=kind-a]')].map(
                (r) => [r.value, r.disabled ? 'disabled' : r.checked ? 'checked' : 'enabled'])),
            text_a: shown(document.querySelector('[name=text-a]')),
            buttons: [...fake.querySelectorAll('button')].map((b) => b.textContent)};"""


def test_the_page_offers_only_what_the_model_can_do(server, browser, tmp_path):
    """The bundled model can do everything; Karlo (text-only CLIP) cannot vary or mix an image; an image-variations
    model (no prior) cannot generate, edit, mix a text or mix toward a caption. The page hides what the server
    would refuse, and opens on the first verb the model can do."""
    pytest.importorskip("diffusers")
    import karlo_tiny

    from test_serve_api import free_port, start_server, wait_until_up

    url, _ = server
    browser.get(url + "/")
    wait_for(browser, "return document.body.dataset.ready === '1'")
    assert browser.execute_script(PAGE_STATE) == {
        "tabs": ["generate", "edit", "vary", "mix"], "selected": "generate", "form": ["generate"], "prompt_mix": False,
        "sides": {"image": "checked", "text": "enabled"}, "text_a": False,
        "buttons": ["Edit", "Vary", "Mix A", "Mix B"]}  # prompt_mix: on the Vary form, hidden until that tab opens
    browser.execute_script("selectTab('vary')")
    assert browser.execute_script(PAGE_STATE)["prompt_mix"]  # shown on the Vary form of a model with a prior
    expected = {
        False: {"tabs": ["generate", "edit", "mix"], "selected": "generate", "form": ["generate"], "prompt_mix": False,
                "sides": {"image": "disabled", "text": "checked"}, "text_a": False, "buttons": ["Edit"]},
        True: {"tabs": ["vary", "mix"], "selected": "vary", "form": ["vary"], "prompt_mix": False,
               "sides": {"image": "checked", "text": "disabled"}, "text_a": False,
               "buttons": ["Vary", "Mix A", "Mix B"]},
    }
    for variations in (False, True):
        root, home = tmp_path / f"karlo-{variations}", tmp_path / f"home-{variations}"
        karlo_tiny.write_folder(root, seed=0, variations=variations)
        home.mkdir()
        port = free_port()
        proc = start_server(home, tmp_path / f"out-{variations}", port, "--model", str(root))
        try:
            wait_until_up(proc, port, limit=300)
            browser.get(f"http://127.0.0.1:{port}/")
            wait_for(browser, "return document.body.dataset.ready === '1'")
            assert browser.execute_script(PAGE_STATE) == expected[variations], variations
            if not variations:  # Karlo's mix form shows the text fields, since text is the only side it takes
                browser.execute_script("selectTab('mix')")
                assert browser.execute_script(PAGE_STATE)["text_a"]

        finally:
            proc.terminate()
            proc.communicate(timeout=60)
