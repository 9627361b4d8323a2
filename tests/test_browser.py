"""The app in a real browser: Playwright (sync API) driving Debian's Chromium against the app served in-process.

Needs /usr/bin/chromium (`apt-get update && apt-get install -y chromium`); without it these tests FAIL, never skip.
Screenshots of the main views go to artifacts/screenshots/ (git-ignored).
"""

import os
import socket
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("MASKLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
IGNORED = '#token-view [data-label="-100"]'
TOKENS = "#token-view [data-token-id]"
UPLOAD = ".data-row input[type=file]"  # UploadButton(elem_id="upload") keeps its <input> beside the button


PORTS = range(7901, 7910)  # the ports this machine's browser tests may serve on


def free_port() -> int:
    """The first of PORTS nothing listens on."""
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@pytest.fixture(scope="module")
def app_url():
    from app.main import build_app

    demo = build_app()
    port = launch(demo)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def launch(demo, tries: int = 3) -> int:
    """Launch on a free port; again (on the next free one) where the server did not start in time. Gradio gives its
    server 5 s to start and then says "Cannot find empty port": on these 2 cores, with the other test worker busy
    (spawned workers importing torch), a start took longer once. A server that starts late keeps its port, so the
    next try takes the next free one."""
    from app.main import launch_options

    for attempt in range(tries):
        port = free_port()
        try:
            demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_options())
            return port
        except OSError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: the browser tests need it. Install it with "
                    "`apt-get update && apt-get install -y chromium` (or set MASKLENS_CHROMIUM). These tests must not "
                    "be skipped.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page on the loaded app: the load event has rendered the default sample."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 950})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app_url)
    pg.wait_for_selector(TOKENS, timeout=60_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def shot(pg, name: str, full_page: bool = False):
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def count(pg, selector: str) -> int:
    return pg.locator(selector).count()


def wait_count(pg, selector: str, op: str, n: int, timeout: int = 20_000):
    pg.wait_for_function(f"() => document.querySelectorAll({selector!r}).length {op} {n}", timeout=timeout)


def fill_kept(box, text: str, tries: int = 5):
    """Fill a text or number box and make sure the value stays. A Gradio 6 box mounted a moment ago (an accordion just
    opened, a tab just shown) can put its initial value back right after Playwright's fill, which types within
    milliseconds of the mount (2 in 8 unloaded runs of Compare's weight box here: its input event carried "0.1", the
    box read "0" ms later: the CI failures of test_compare_counts_a_weighted_configurations_tokens_as_differing). A
    person cannot type that fast, so fill again until the text holds for 300 ms."""
    for _ in range(tries):
        box.fill(text)
        box.page.wait_for_timeout(300)
        if box.input_value() == text:
            return
    raise AssertionError(f"the box would not keep {text!r} (it shows {box.input_value()!r})")


def choose_sample(pg, name: str, n_examples: int):
    pg.locator("#sample input").click()
    pg.get_by_role("option", name=name, exact=False).click()
    pg.wait_for_selector(f"#caption:has-text('of {n_examples}')", timeout=40_000)


def test_load_shows_the_token_view(page):
    n = count(page, TOKENS)
    assert n > 100
    assert 0 < count(page, IGNORED) < n  # assistant_only: some tokens trained, some not
    assert page.get_by_role("radio", name="assistant_only", exact=True).is_checked()
    assert "chat_multiturn.jsonl" in page.locator("#data-info").inner_text()
    assert "example 1 of 6" in page.locator("#caption").inner_text()
    # hovering a token shows its id, label, message and rule
    page.locator(TOKENS).nth(5).hover()
    tip = page.locator("#ml-tip")
    tip.wait_for(state="visible", timeout=10_000)
    text = tip.inner_text()
    assert "label" in text and "message" in text and "trained" in text
    shot(page, "inspect")


def test_strategy_switch_changes_labels(page):
    before = count(page, IGNORED)
    page.get_by_role("radio", name="full", exact=True).check()
    wait_count(page, IGNORED, "===", 0)
    page.get_by_role("radio", name="last_assistant", exact=True).check()
    wait_count(page, IGNORED, ">", before)
    page.get_by_role("radio", name="response_template", exact=True).check()
    page.wait_for_selector("#findings [data-code='pad_is_eos']", timeout=40_000)
    page.get_by_role("button", name="Next ▶").click()
    page.wait_for_selector("#caption:has-text('example 2 of 6')", timeout=40_000)
    shot(page, "inspect_response_template")


def test_typing_a_mask_token_then_clicking_a_strategy_applies_both(page):
    """A click on another control right after typing in a text box is not swallowed (a blur event used to start a
    render whose progress overlay covered the control), and the click's event carries the typed text too."""
    page.locator("#mask-tokens textarea, #mask-tokens input").first.click()
    page.keyboard.type("<|im_end|>")
    page.get_by_role("radio", name="full", exact=True).click()
    page.wait_for_function(f"() => document.querySelectorAll({IGNORED!r}).length > 0 && "
                           f"document.querySelectorAll({TOKENS!r}).length > 0", timeout=40_000)
    page.wait_for_timeout(1_500)  # nothing may flip it back
    assert page.get_by_role("radio", name="full", exact=True).is_checked()
    ignored = {page.locator(IGNORED).nth(i).get_attribute("data-token-id") for i in range(count(page, IGNORED))}
    assert len(ignored) == 1 and "im_end" in page.locator(IGNORED).first.inner_text()  # full: all but the masked one


def test_upload_a_broken_file_lists_bad_rows_and_keeps_the_valid_ones(page, tmp_path):
    page.locator(UPLOAD).set_input_files(str(REPO / "assets" / "samples" / "broken.jsonl"))
    page.wait_for_selector("#data-info:has-text('5 rows could not be read')", timeout=40_000)
    info = page.locator("#data-info").inner_text()
    assert "unknown role" in info and "not valid JSON" in info and "is missing" in info
    page.wait_for_selector("#caption:has-text('of 2')", timeout=40_000)
    assert count(page, TOKENS) > 0
    shot(page, "inspect_upload_errors")
    # a file that cannot be read at all: an error in the page, and the page keeps working
    bad = tmp_path / "empty.jsonl"
    bad.write_text("")
    page.locator(UPLOAD).set_input_files(str(bad))
    page.wait_for_selector("#inspect-error:has-text('the file is empty')", timeout=40_000)
    page.get_by_role("radio", name="full", exact=True).check()
    wait_count(page, IGNORED, "===", 0)


def test_audit_finding_opens_in_inspect(page):
    choose_sample(page, "text.jsonl", 3)  # plain text: the strategy follows the data (full; the notice is tested in
    page.wait_for_function(  # test_browser_first_use)
        "() => [...document.querySelectorAll('input[type=radio]')].some(r => r.value === 'full' && r.checked)",
        timeout=40_000)
    page.get_by_role("radio", name="assistant_only", exact=True).check()  # every example is then a problem
    page.wait_for_selector("#findings [data-code='strategy_not_applicable']", timeout=40_000)
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-run").click()
    page.wait_for_selector("#audit-summary .kpis", timeout=30_000)
    page.wait_for_selector("#audit-counts code:has-text('no_trained_tokens')", timeout=10_000)
    page.locator("#packing-run").click()
    page.wait_for_selector("#packing .prow", timeout=60_000)
    page.wait_for_selector("#packed-row .brk", timeout=10_000)
    shot(page, "audit", full_page=True)
    cells = page.locator("#audit-problems [role=gridcell]")
    page.wait_for_selector("#audit-problems [role=gridcell]:has-text('strategy_not_applicable')", timeout=10_000)
    texts = [cells.nth(i).inner_text().strip() for i in range(cells.count())]
    assert texts.count("no_trained_tokens, strategy_not_applicable") == 3, texts
    cells.nth(texts.index("2")).click()  # the "#" cell of the second problem row
    page.wait_for_selector("#caption:has-text('example 2 of 3')", timeout=40_000)
    assert page.get_by_role("tab", name="Inspect").get_attribute("aria-selected") == "true"


def test_compare_two_strategies(page):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#cmp-view-a [data-token-id]", timeout=30_000)
    page.get_by_role("radio", name="2", exact=True).check()
    page.wait_for_function("() => !document.querySelector('#cmp-view-c') || "
                           "document.querySelector('#cmp-view-c').offsetParent === null", timeout=40_000)
    page.locator("#compare-run").click()
    page.wait_for_selector("#compare-summary .ndiff", timeout=40_000)
    time.sleep(0.3)
    n_diff = int(page.locator("#compare-summary .ndiff").get_attribute("data-diff"))
    # A = full, B = assistant_only: the tokens that differ are exactly those assistant_only ignores
    assert n_diff == count(page, '#cmp-view-b [data-label="-100"]') > 0
    assert count(page, "#cmp-view-a span.d") == n_diff
    shot(page, "compare")


def test_templates_and_export_views(page):
    page.get_by_role("tab", name="Templates").click()
    page.wait_for_selector("#template-checks table", timeout=30_000)
    page.locator("#generate-template").click()
    page.wait_for_selector("#template-proof :text('Proven')", timeout=30_000)
    shot(page, "templates", full_page=True)
    page.get_by_role("tab", name="Export").click()
    page.locator("#export-run").click()
    page.wait_for_selector("#export-status :text('Wrote')", timeout=30_000)
    shot(page, "export")


def test_4000_token_conversation_renders_and_paints_fast(page, tmp_path):
    import json

    from .test_app_callbacks import long_conversation

    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps(long_conversation()) + "\n")
    t0 = time.perf_counter()
    page.locator(UPLOAD).set_input_files(str(p))
    wait_count(page, TOKENS, ">", 4000, timeout=30_000)
    end_to_end = time.perf_counter() - t0
    n = count(page, TOKENS)
    # browser side alone: parse the same HTML into a fresh element and force style + layout
    paint_ms = page.evaluate("""() => {
        const html = document.querySelector('#token-view').outerHTML.replace('id="token-view"', 'id="tv-copy"');
        const box = document.createElement('div'); box.className = 'tvbox';
        const t0 = performance.now();
        box.innerHTML = html; document.querySelector('#token-view').parentElement.appendChild(box);
        box.getBoundingClientRect(); document.body.offsetHeight;
        const ms = performance.now() - t0; box.remove(); return ms; }""")
    page.locator(TOKENS).nth(n - 10).hover()
    page.locator("#ml-tip").wait_for(state="visible", timeout=10_000)
    print(f"\n{n}-token conversation: upload -> tokens on screen {end_to_end:.2f} s; "
          f"browser parse + layout of the view {paint_ms:.0f} ms")
    assert end_to_end < 10 and paint_ms < 1500
    shot(page, "inspect_4k_tokens")
