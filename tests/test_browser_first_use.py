"""A newcomer's first minutes, in a real browser (Playwright + Debian's Chromium, as tests/test_browser.py): the tooltip
tells the truth after every kind of re-render, the first view explains itself, samples show their feature, the
strategy follows the data, the phone layout puts tokens first, and the small things around them.

Screenshots go to artifacts/screenshots/ (git-ignored).
"""

import re

import pytest

from tests import test_browser
from tests.test_browser import REPO, TOKENS, UPLOAD, fill_kept, shot

app_url, browser, page = test_browser.app_url, test_browser.browser, test_browser.page  # its fixtures, shared

# One hover: what the tooltip says beside what the hovered span itself carries (its place among the view's tokens,
# its id and label, and the row of the view's data-info table its data-k points to), read fresh from the page.
HOVERED = """(i) => {
  const toks = document.querySelectorAll('#token-view [data-token-id]');
  const s = toks[i];
  const tv = s.closest('.tv');
  const [msg, role, part, rule] = JSON.parse(tv.dataset.info)[+s.dataset.k];
  return {pos: i, id: s.dataset.tokenId, label: s.dataset.label, part, rule,
          tip: document.getElementById('ml-tip').textContent};
}"""
TIP_HEAD = re.compile(r"^#(\d+)\s+id (\d+)\s+label (-?\d+)")


def single_line_tokens(pg, n: int = 8) -> list[int]:
    """Positions of n tokens spread over the view (first, last, trained and ignored ones among them) whose span is
    one box on screen, so that hovering its centre hovers it."""
    return pg.evaluate("""(n) => {
      const toks = [...document.querySelectorAll('#token-view [data-token-id]')];
      const ok = toks.map((s, i) => [s, i]).filter(([s]) => s.getClientRects().length === 1 && !s.querySelector('br'))
        .map(([, i]) => i);
      const pick = new Set([ok[0], ok[ok.length - 1]]);
      const firstOf = (lab) => ok.find((i) => (toks[i].dataset.label === '-100') === lab);
      [firstOf(true), firstOf(false)].forEach((i) => i !== undefined && pick.add(i));
      for (let k = 1; pick.size < n && k < n; k++) pick.add(ok[Math.floor(k * (ok.length - 1) / n)]);
      return [...pick].filter((i) => i !== undefined).sort((a, b) => a - b);
    }""", n)


def check_tooltips(pg, when: str) -> int:
    """Hover tokens across the view; each tooltip must name the hovered span's own position, id, label, part and a
    rule that agrees with its label. Returns how many were checked."""
    positions = single_line_tokens(pg)
    assert len(positions) >= 4, when
    for i in positions:
        pg.locator(TOKENS).nth(i).hover()
        pg.locator("#ml-tip").wait_for(state="visible", timeout=10_000)
        h = pg.evaluate(HOVERED, i)
        lines = h["tip"].split("\n")
        m = TIP_HEAD.match(lines[0])
        assert m, (when, h["tip"])
        assert (int(m.group(1)), m.group(2), m.group(3)) == (h["pos"], h["id"], h["label"]), (when, h)
        assert lines[1].endswith(f"part: {h['part']}"), (when, h)
        assert lines[2] == h["rule"], (when, h)
        trained = h["label"] != "-100"
        assert not h["rule"].startswith("not trained" if trained else "trained"), (when, h)
    return len(positions)


def wait_render(pg, before: str, timeout: int = 20_000):
    """Wait until the token view's content differs from `before` (its outerHTML)."""
    pg.wait_for_function("(b) => { const tv = document.querySelector('#token-view'); "
                         "return tv && tv.outerHTML !== b; }", arg=before, timeout=timeout)


def view_html(pg) -> str:
    return pg.evaluate("() => document.querySelector('#token-view').outerHTML")


@pytest.fixture(scope="module")
def qwen3_tok_dir(tmp_path_factory, smol_tok):
    """A tokenizer directory: the SmolLM2 vocabulary plus Qwen3's special tokens, carrying TRL's qwen3.jinja."""
    from tests.trl_reference import family_tokenizer

    d = tmp_path_factory.mktemp("qwen3_tok")
    family_tokenizer(smol_tok, "qwen3", tag_tokens=True).save_pretrained(d)
    return d


def test_the_tooltip_names_the_hovered_token_after_every_kind_of_re_render(page, qwen3_tok_dir, tmp_path):
    """Gradio patches the token view in place (same elements, new attributes and children): nothing the tooltip
    remembers from an earlier view may survive. Hover before and after each kind of change."""
    check_tooltips(page, "first view")

    before = view_html(page)
    page.get_by_role("radio", name="full", exact=True).check()  # strategy: every label changes
    wait_render(page, before)
    check_tooltips(page, "strategy full")

    before = view_html(page)
    page.get_by_role("button", name="Next ▶").click()  # example: other tokens, other table
    wait_render(page, before)
    check_tooltips(page, "next example")

    before = view_html(page)
    page.get_by_role("radio", name="assistant_only", exact=True).check()
    wait_render(page, before)
    before = view_html(page)
    page.locator("#shift-toggle input").check()  # label shift: markers between the tokens
    wait_render(page, before)
    check_tooltips(page, "label shift")

    before = view_html(page)
    page.locator("#tokenizer-name textarea, #tokenizer-name input").first.fill(str(qwen3_tok_dir))
    page.locator("#tokenizer-load").click()  # tokenizer: other ids, other template
    wait_render(page, before, timeout=60_000)
    check_tooltips(page, "tokenizer")

    before = view_html(page)
    page.locator(UPLOAD).set_input_files(str(REPO / "assets" / "samples" / "tools.jsonl"))  # upload: other data
    wait_render(page, before)
    check_tooltips(page, "upload")
    shot(page, "tooltip_after_upload")


def labels(pg) -> list[str]:
    return pg.eval_on_selector_all(TOKENS, "els => els.map(e => e.dataset.label)")


def test_the_first_view_says_what_is_in_effect_and_offers_the_marked_template_in_one_click(page):
    line = page.locator("#template-line").inner_text()
    assert "masked by MaskLens" in line and "no training template for this model's chat template" in line
    assert "raises" not in line and "Error" not in line  # one plain sentence, no exception text
    own = page.locator("#template-source input[value='own']")
    assert own.is_checked() and own.is_disabled()  # the source in effect, not a choice here
    finding = page.locator("#findings [data-code='trl_cannot_patch']")
    assert "ValueError" not in finding.locator(".fm").inner_text()  # TRL's message is folded away
    assert not finding.locator("details").evaluate("d => d.open")
    before = labels(page)
    shot(page, "first_view")

    page.locator("#use-marked").click()
    page.wait_for_selector("#inspect-notice:has-text('proven on')", timeout=30_000)
    assert "{% generation %} markers" in page.locator("#template-line").inner_text()
    trl = page.locator("#template-source input[value='trl']")
    assert trl.is_checked() and trl.is_enabled()
    assert "generation" in page.locator("#template-pick input").input_value()
    assert page.locator("#findings [data-code='trl_cannot_patch']").count() == 0
    assert not page.locator("#use-marked").is_visible()
    assert labels(page) == before  # proven: the same labels, now as TRL computes them
    shot(page, "first_view_marked")


@pytest.mark.parametrize("sample, n, part", [("reasoning.jsonl", 8, "pr"), ("tools.jsonl", 3, "pt"),
                                             ("agent_traces.jsonl", 8, "pt")])
def test_samples_show_their_feature(page, sample, n, part):
    """The tokenizer's own (SmolLM2) template renders neither reasoning nor tool calls: the app switches to TRL's
    qwen3 with this vocabulary and says so; the feature's tokens are there and trained."""
    from tests.test_browser import choose_sample

    choose_sample(page, sample, n)
    page.wait_for_selector("#inspect-notice:has-text('qwen3.jinja')", timeout=60_000)  # (after a chained re-render)
    assert "qwen3" in page.locator("#template-pick input").input_value()
    trained = f'#token-view span.{part}:not([data-label="-100"])'
    page.wait_for_function(f"() => document.querySelectorAll({trained!r}).length > 0", timeout=40_000)
    assert page.locator("#findings [data-code='tool_call_not_trained']").count() == 0
    assert page.locator("#findings [data-code='reasoning_not_rendered']").count() == 0
    if part == "pr":  # the Reasoning option now does something: think blocks rendered, not trained
        page.locator("#reasoning").get_by_role("radio", name="mask").check()
        page.wait_for_function(f"() => document.querySelectorAll({trained!r}).length === 0 && "
                               "document.querySelectorAll('#token-view span.pr').length > 0", timeout=40_000)
    shot(page, f"sample_{sample.split('.')[0]}")


def test_the_strategy_follows_the_data(page):
    from tests.test_browser import choose_sample

    choose_sample(page, "prompt_completion.jsonl", 4)
    page.wait_for_selector("#inspect-notice:has-text('Strategy set to completion_only')", timeout=40_000)
    assert page.get_by_role("radio", name="completion_only", exact=True).is_checked()
    assert page.locator('#token-view [data-token-id]:not([data-label="-100"])').count() > 0
    assert page.locator("#findings .sev-error").count() == 0
    choose_sample(page, "chat_multiturn.jsonl", 6)
    page.wait_for_selector("#inspect-notice:has-text('Strategy set to assistant_only')", timeout=40_000)
    assert page.get_by_role("radio", name="assistant_only", exact=True).is_checked()


SIZES = [(1600, 1000), (1280, 800), (390, 844)]


@pytest.mark.parametrize("width, height", SIZES)
def test_tokens_come_first_and_every_tab_is_in_sight(browser, app_url, width, height):
    """At each size the first screen shows tokens; on a phone the long option panels start folded; every tab's
    button is on screen (no overflow menu)."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(app_url)
        pg.wait_for_selector(TOKENS, timeout=60_000)
        pg.wait_for_timeout(500)  # the phone's panels fold after the first render
        top = pg.evaluate("() => document.querySelector('#token-view').getBoundingClientRect().top")
        assert top < height * 0.6, top
        for name in ("Inspect", "Rules", "Compare", "Templates", "Audit", "Export", "Train"):
            tab = pg.get_by_role("tab", name=name)
            assert tab.is_visible() and tab.bounding_box()["x"] + tab.bounding_box()["width"] <= width, name
        folded = pg.evaluate("() => [...document.querySelectorAll('.fold-narrow > button.label-wrap')]"
                             ".map(b => b.classList.contains('open'))")
        assert folded == ([False, False] if width < 700 else [True, True])
        shot(pg, f"first_view_{width}x{height}")
        shot(pg, f"first_view_{width}x{height}_full", full_page=True)
    finally:
        ctx.close()
    assert not errors, errors


def test_an_upload_is_selected_in_the_data_picker_and_can_be_picked_again(page):
    from tests.test_browser import choose_sample

    page.locator(UPLOAD).set_input_files(str(REPO / "assets" / "samples" / "weighted.jsonl"))
    page.wait_for_selector("#data-info:has-text('weighted.jsonl')", timeout=40_000)
    page.wait_for_function("() => document.querySelector('#sample input').value.includes('your file')",
                           timeout=40_000)
    choose_sample(page, "chat_multiturn.jsonl", 6)
    page.locator("#sample input").click()
    page.get_by_role("option", name="weighted.jsonl — your file").click()
    page.wait_for_selector("#caption:has-text('of 3')", timeout=40_000)
    assert "weighted.jsonl" in page.locator("#data-info").inner_text()


def test_messages_name_the_apps_controls_and_leave_no_toasts(page, tmp_path):
    """A tokenizer without a chat template: the fix names the Chat template picker, not a CLI flag; errors stay in
    the page's error box (no toast outliving them)."""
    import json

    from core.models import load_tokenizer

    d = tmp_path / "no_template_tok"
    load_tokenizer().save_pretrained(d)  # the embedded tokenizer, its chat template taken out
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in d.glob("*.jinja"):
        extra.unlink()
    page.locator("#tokenizer-name textarea, #tokenizer-name input").first.fill(str(d))
    page.locator("#tokenizer-load").click()
    page.wait_for_selector("#inspect-error .errbox", timeout=60_000)
    text = page.locator("#inspect-error").inner_text()
    assert "Chat template" in text and "--" not in text, text
    assert page.locator(".toast-body").count() == 0
    shot(page, "no_chat_template")


def test_a_number_out_of_range_says_which_example_is_shown(page):
    box = page.locator("#example-number input")
    box.fill("99")
    box.press("Enter")
    page.wait_for_selector("#inspect-notice:has-text('There is no example 99')", timeout=40_000)
    assert "example 6 of 6" in page.locator("#caption").inner_text()
    page.get_by_role("button", name="◀ Prev").click()
    page.wait_for_selector("#caption:has-text('example 5 of 6')", timeout=40_000)
    assert page.locator("#inspect-notice .notice").count() == 0  # a notice lasts one view


def test_compare_opens_on_two_configurations_with_its_own_marker(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-run").click()
    page.wait_for_selector("#compare-summary .ndiff", timeout=30_000)
    assert page.locator("#cmp-view-a").is_visible() and page.locator("#cmp-view-b").is_visible()
    assert not page.locator("#cmp-box-c").is_visible()
    assert "labels differing vs A" in page.locator("#compare-summary").inner_text()
    colours = page.evaluate("""() => ({
      diff: getComputedStyle(document.querySelector('#cmp-view-a span.d')).boxShadow,
      eot: getComputedStyle(document.querySelector('#cmp-view-a span.pe')).borderBottomColor})""")
    assert colours["eot"] not in colours["diff"], colours
    shot(page, "compare_two")


def test_export_offers_split_rows_only_with_split_turns(page):
    page.get_by_role("tab", name="Export").click()
    page.wait_for_selector("#export-format input[value='JSONL']", timeout=40_000)
    assert page.locator("#export-format input[value^='split rows']").count() == 0
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#split-turns input").check()
    page.wait_for_selector("#turn-pick", timeout=40_000)
    page.get_by_role("tab", name="Export").click()
    page.wait_for_selector("#export-format input[value^='split rows']", timeout=40_000)


def test_train_estimates_the_time_before_start(page):
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-estimate .estimate", timeout=30_000)
    text = page.locator("#train-estimate").inner_text()
    assert text.startswith("Estimate: 20 steps ≈") and "s per step of" in text, text
    steps = page.locator("#train-steps input")
    fill_kept(steps, "40")
    steps.press("Enter")
    page.wait_for_selector("#train-estimate:has-text('Estimate: 40 steps')", timeout=40_000)
    assert page.locator("#train-name input, #train-name textarea").first.get_attribute("placeholder").startswith(
        "empty: strategy + time")
    shot(page, "train_estimate")


@pytest.fixture
def tiny_model_dir(tmp_path, smol_tok, monkeypatch):
    """A 2-layer random Llama with the embedded tokenizer (trains in milliseconds), runs kept in tmp_path."""
    from tests.conftest import tiny_llama

    monkeypatch.setenv("MASKLENS_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "tiny"
    tiny_llama(smol_tok).save_pretrained(path)
    smol_tok.save_pretrained(path)
    return path


def test_a_named_run_stops_and_its_stopping_message_goes(page, tiny_model_dir):
    page.get_by_role("tab", name="Train").click()
    fill_kept(page.locator("#train-model textarea, #train-model input").first, str(tiny_model_dir))
    fill_kept(page.locator("#train-steps input"), "5000")
    page.locator("#train-steps input").press("Enter")
    page.wait_for_selector("#train-estimate:has-text('No time estimate for this model yet')", timeout=40_000)
    page.locator("#train-name textarea, #train-name input").first.fill("my first run")
    page.locator("#train-start").click()
    page.wait_for_selector("#train-message:has-text('Started my-first-run')", timeout=60_000)
    page.wait_for_selector("#train-progress [data-status='running']:has-text('s/step')", timeout=120_000)
    page.locator("#train-stop").click()
    page.wait_for_selector("#train-message:has-text('Stopping my-first-run')", timeout=40_000)
    page.wait_for_selector("#train-progress [data-status='stopped']", timeout=120_000)
    page.wait_for_function("() => !document.querySelector('#train-message').innerText.includes('Stopping')",
                           timeout=40_000)
    assert "my-first-run" in page.locator("#train-runs").inner_text()
    page.locator("#train-steps input").fill("100")
    page.locator("#train-steps input").press("Enter")  # now measured here: the estimate rests on that run
    page.wait_for_selector("#train-estimate:has-text('by the last 1 run of this model here')", timeout=40_000)
    shot(page, "train_stopped")
