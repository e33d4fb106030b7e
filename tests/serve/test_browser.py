"""The page in a real browser (Debian's headless Chromium through Selenium): type a
sentence, press Enter, see thumbnails that loaded, click one and watch the moment play
from its start; the streams' label timelines draw. Each test saves a screenshot."""

from __future__ import annotations

import pytest

from .browser import need_chromium, start_chromium
from .conftest import wait_for


@pytest.fixture
def browser():
    need_chromium()
    d = start_chromium()
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _thumbs_loaded(d):
    return d.execute_script("""
        const imgs = [...document.querySelectorAll('#grid .card img')];
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;""")


def test_search_see_thumbnails_click_and_watch_the_moment(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server.url + "/")
    box = d.find_element(By.ID, "q")
    box.send_keys("a dog catches the frisbee")
    box.send_keys(Keys.ENTER)
    n = wait_for(lambda: _thumbs_loaded(d), timeout=30)
    cards = d.find_elements(By.CSS_SELECTOR, "#grid .card")
    assert n == len(cards) >= 2
    text = cards[0].text
    assert "–" in text and ("park.mp4" in text or "kitchen.webm" in text)
    assert d.find_elements(By.CSS_SELECTOR, "#grid .card .chip")
    # the timelines: one canvas per stream, each with its segments drawn
    drawn = wait_for(
        lambda: d.execute_script(
            "const c=[...document.querySelectorAll('canvas.timeline')];"
            "return c.length===2 && c.every(x=>+x.dataset.drawn>0) ? c.map(x=>+x.dataset.drawn) : null;"
        ),
        timeout=20,
    )
    assert sorted(drawn) == [6, 8]
    d.save_screenshot(str(tmp_path / "results.png"))

    # click the first moment of the H.264 stream (stream copy) and one of the VP9 stream (transcoded)
    for name in ("park.mp4", "kitchen.webm"):
        card = next(c for c in d.find_elements(By.CSS_SELECTOR, "#grid .card") if name in c.text)
        start = float(card.get_attribute("data-start"))
        card.click()
        state = wait_for(
            lambda: d.execute_script("""
            const v = document.getElementById('video');
            return v.src && !v.paused && v.readyState >= 2 && v.currentTime > 0
              ? [v.currentTime, +v.dataset.clipStart, +v.dataset.momentStart] : null;"""),
            timeout=30,
        )
        now, clip_start, moment_start = state
        assert moment_start == pytest.approx(start)
        assert abs(clip_start + now - start) < 1.0, (name, state)
        d.save_screenshot(str(tmp_path / f"playing-{name}.png"))
    assert (tmp_path / "playing-park.mp4.png").stat().st_size > 10_000


def test_more_like_this_and_a_timeline_click(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server.url + "/")
    canvas = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "canvas.timeline[data-drawn]"), timeout=20)[0]
    canvas.click()  # the moment under the click: "more like this"
    wait_for(lambda: _thumbs_loaded(d), timeout=30)
    assert "like" in d.find_element(By.ID, "status").text
    first = d.find_elements(By.CSS_SELECTOR, "#grid .card")[0]
    first_id = first.get_attribute("data-id")
    first.find_element(By.CSS_SELECTOR, "button.more").click()
    wait_for(
        lambda: (
            d.find_elements(By.CSS_SELECTOR, "#grid .card")
            and first_id not in [c.get_attribute("data-id") for c in d.find_elements(By.CSS_SELECTOR, "#grid .card")]
        ),
        timeout=30,
    )
    wait_for(lambda: _thumbs_loaded(d), timeout=30)
    d.save_screenshot(str(tmp_path / "more-like-this.png"))


def test_an_error_is_shown_on_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server.url + "/")
    box = d.find_element(By.ID, "q")
    box.send_keys("a dog " * 30)
    box.send_keys(Keys.ENTER)
    status = wait_for(
        lambda: (lambda s: s if "tokens" in s.text else None)(d.find_element(By.ID, "status")), timeout=20
    )
    assert "error" in status.get_attribute("class") and "shorten it" in status.text
    d.save_screenshot(str(tmp_path / "error.png"))


def test_a_live_moment_shows_its_thumbnail_and_says_it_has_no_clip(gone_store, serve_files, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from .conftest import Server

    s = Server(gone_store, files=serve_files)
    try:
        d = browser
        d.get(s.url + "/")
        box = d.find_element(By.ID, "q")
        box.send_keys("a dog")
        box.send_keys(Keys.ENTER)
        wait_for(lambda: _thumbs_loaded(d), timeout=30)
        card = d.find_elements(By.CSS_SELECTOR, "#grid .card")[0]
        assert "thumbnail only" in card.text.lower()
        card.click()
        note = d.find_element(By.ID, "live-note")
        wait_for(lambda: note.is_displayed(), timeout=10)
        assert "thumbnail only" in note.text and not d.execute_script("return document.getElementById('video').src")
        d.save_screenshot(str(tmp_path / "live.png"))
    finally:
        s.stop()


def test_the_api_docs_render_offline(server, browser, tmp_path):
    """Swagger UI draws the API from files the server itself serves (the browser here
    has no network to fetch a CDN's)."""
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server.url + "/docs")
    ops = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), timeout=30)
    paths = {o.get_attribute("data-path") or o.text for o in ops}
    assert "/api/search" in paths, paths
    d.save_screenshot(str(tmp_path / "docs.png"))
