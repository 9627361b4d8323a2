"""The generated option controls, loss weights and image runs in a real browser (Playwright + Debian's Chromium, as
tests/test_browser.py): Prompt loss weight shades the tokens it weights and the tooltip names the weight, Content parts
joins typed content, a run of image tokens folds and unfolds in place, Compare counts a weighted configuration's
tokens as differing. Screenshots at three sizes go to artifacts/screenshots/ (git-ignored)."""

import json
import zipfile

import pytest

from tests import test_browser
from tests.test_browser import TOKENS, UPLOAD, fill_kept, shot

app_url, browser, page = test_browser.app_url, test_browser.browser, test_browser.page  # its fixtures, shared
SIZES = [(1600, 1000), (1280, 800), (390, 844)]
WEIGHTED = "#token-view span.w"


def shots(pg, name: str, at: str = "#token-view", hover=None):
    """A screenshot at each of SIZES, `at` scrolled into view and `hover` (a locator) hovered, its tooltip showing;
    the page's own size back after."""
    size = pg.viewport_size
    for w, h in SIZES:
        pg.set_viewport_size({"width": w, "height": h})
        pg.wait_for_timeout(300)
        pg.locator(at).first.scroll_into_view_if_needed()
        if hover is not None:
            hover.hover()
            pg.locator("#ml-tip").wait_for(state="visible", timeout=10_000)
        else:
            pg.mouse.move(0, 0)
        shot(pg, f"{name}_{w}x{h}")
    pg.set_viewport_size(size)


def background(pg, selector: str) -> str:
    return pg.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor + getComputedStyle(e).backgroundImage")


def test_prompt_loss_weight_shades_its_tokens_and_the_tooltip_names_the_weight(page, tmp_path):
    box = page.locator("#prompt-loss-weight input")
    fill_kept(box, "0.1")
    box.press("Enter")
    page.wait_for_function(f"() => document.querySelectorAll({WEIGHTED!r}).length > 0", timeout=40_000)
    assert page.locator('#token-view [data-label="-100"]').count() == 0  # every untrained token now weighs 0.1
    trained = '#token-view span[data-token-id]:not(.w):not(.x)'
    assert background(page, f"{WEIGHTED}.w1") != background(page, trained)
    single = page.evaluate("""() => [...document.querySelectorAll('#token-view span.w')].findIndex(
        s => s.getClientRects().length === 1 && !s.querySelector('br'))""")
    page.locator(WEIGHTED).nth(single).hover()
    tip = page.locator("#ml-tip")
    tip.wait_for(state="visible", timeout=10_000)
    head, _, rule = tip.inner_text().split("\n")[:3]
    assert "weight 0.1" in head and rule.startswith("weight 0.1 (prompt_loss_weight)"), tip.inner_text()
    assert page.locator("#legend [data-legend='weighted']").is_visible()
    assert "weighted" in page.locator("#stats .kpis").inner_text().lower()
    assert page.locator("#stats .wshare").count() == 1
    shots(page, "weights_inspect", hover=page.locator(WEIGHTED).nth(single))

    # Content parts: typed text parts the embedded template cannot print render once joined
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}]}
    (p := tmp_path / "typed.jsonl").write_text(json.dumps(row) + "\n")
    page.locator(UPLOAD).set_input_files(str(p))
    page.wait_for_selector("#inspect-error:has-text('failed to render')", timeout=40_000)
    page.locator("#content-parts").get_by_role("radio", name="join").check()
    page.wait_for_selector(TOKENS, timeout=40_000)
    assert page.locator("#inspect-error .errbox").count() == 0


@pytest.fixture(scope="module")
def vl_upload(tmp_path_factory, smol_tok):
    """(a LLaVA-NeXT tokenizer folder with its processor, a .zip of a one-row dataset with its image)."""
    from tests.vision_reference import save_vision_data, save_vision_tokenizer

    tok = save_vision_tokenizer(smol_tok, tmp_path_factory.mktemp("vl_tok"))
    data = save_vision_data(tmp_path_factory.mktemp("vl_data"))
    zpath = tmp_path_factory.mktemp("vl_zip") / "colours.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for name in ("vl.jsonl", "red.png"):
            z.write(data / name, name)
    return tok, zpath


def test_a_run_of_image_tokens_folds_and_unfolds_in_place(page, vl_upload):
    tok, zpath = vl_upload
    page.locator("#tokenizer-name textarea, #tokenizer-name input").first.fill(str(tok))
    page.locator("#tokenizer-load").click()
    page.wait_for_function("() => document.querySelector('#template-line').innerText.length > 0", timeout=60_000)
    page.locator(UPLOAD).set_input_files(str(zpath))
    run = page.locator("#token-view details.imgrun")
    run.wait_for(timeout=60_000)
    summary = run.locator("summary")
    assert summary.inner_text().strip().endswith("<image> ×9") and run.get_attribute("data-label") == "-100"
    inner = run.locator("[data-token-id]")
    assert inner.count() == 9 and not inner.first.is_visible()
    assert page.locator("#legend [data-legend='images']").is_visible()
    shots(page, "image_run_folded")
    summary.click()
    inner.first.wait_for(state="visible", timeout=10_000)
    assert run.evaluate("d => d.open")
    inner.nth(4).hover()
    tip = page.locator("#ml-tip")
    tip.wait_for(state="visible", timeout=10_000)
    assert "part: image" in tip.inner_text() and "image placeholder" in tip.inner_text()
    shots(page, "image_run_unfolded", hover=inner.nth(4))
    summary.click()
    page.wait_for_function("() => !document.querySelector('#token-view details.imgrun').open", timeout=10_000)


def test_compare_counts_a_weighted_configurations_tokens_as_differing(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-run").click()
    page.wait_for_selector("#compare-summary .ndiff", timeout=30_000)
    # B (assistant_only) weighs its untrained tokens 0.1: against A (full) they differ by weight, 1 vs 0.1
    page.locator("#cmp-opts-b > button").click()  # B's options, folded
    box = page.locator("#cmp-prompt-loss-weight-b input")
    fill_kept(box, "0.1")  # the box mounts as the options open: a fill at once could be undone (see fill_kept)
    box.press("Enter")
    page.wait_for_selector("#compare-summary:has-text('labelled or weighted differently')", timeout=40_000)
    # A to assistant_only: now A ignores (-100) exactly what B weighs 0.1 (the strategy change re-sends B's value)
    page.locator("#cmp-strategy-a input").click()
    page.get_by_role("option", name="assistant_only", exact=True).click()
    page.wait_for_function("""() => {
        const d = document.querySelector('#compare-summary .ndiff');
        const n = document.querySelectorAll("#cmp-view-a [data-label='-100']").length;
        return d && n > 0 && Number(d.dataset.diff) === n; }""", timeout=40_000)
    n_diff = int(page.locator("#compare-summary .ndiff").get_attribute("data-diff"))
    assert page.locator("#cmp-view-b span.w").count() == n_diff == page.locator("#cmp-view-b span.d").count()
    assert "prompt_loss_weight=0.1" in page.locator("#compare-summary").inner_text()
    shots(page, "compare_weighted", at="#compare-summary")
