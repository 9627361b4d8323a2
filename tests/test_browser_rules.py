"""The Rules tab: its callbacks called directly, then in a real browser (Playwright + Debian's Chromium, as
tests/test_browser.py) editing the rules and seeing the token labels change.

The browser part serves the whole app (app.main.build_app): the Rules tab is opened from the tab bar, and rules
applied there show in the Inspect tab (its strategy list and its token view).
"""

import json
from pathlib import Path

import pytest

from app.session import DEFAULT_SAMPLE, SAMPLES_DIR, Session
from app.tab_rules import EXAMPLE_RULES, MAX_APP_RULES, apply, preview, register_for_app
from core.masking.rules import parse_rules
from core.masking.strategies import get_strategy, strategy_names, unregister
from tests.test_browser import ARGS, CHROMIUM, free_port, shot
from tests.helpers import trained_text

IGNORE = -100
FIRST = json.loads((SAMPLES_DIR / DEFAULT_SAMPLE).read_text().splitlines()[0])["messages"]
ANSWERS = [m["content"] for m in FIRST if m["role"] == "assistant"]
ALL_TURNS = '{"name": "all_turns", "train": [{"role": "assistant", "turns": "all", "parts": ["content", "eot"]}]}'
USER_LAST = "name: user_last\ntrain:\n  - role: user\n    turns: last\n    parts: [content]\n"


@pytest.fixture(autouse=True)
def clean_registry():
    before = set(strategy_names())
    yield
    for n in set(strategy_names()) - before:
        unregister(n)


# ------------------------------------------------------------------------------------------------------ callbacks
def test_preview_renders_the_example_rules_without_changing_the_session(smol_tok):
    s = Session()
    out = preview(s, EXAMPLE_RULES)
    assert out.error == "" and 'id="rules-token-view"' in out.view
    assert s.settings.strategy == "assistant_only"  # preview only
    assert "rules:first_turn@" in out.stats and "train[0]: assistant, first turn: content, eot" in out.stats
    assert 'data-strategy="assistant_only"' in out.status


def test_apply_sets_the_sessions_strategy_and_inspect_renders_with_it(smol_tok):
    s = Session()
    out = apply(s, ALL_TURNS)
    assert out.error == "" and s.settings.strategy.startswith("rules:all_turns@")
    assert f'data-strategy="{s.settings.strategy}"' in out.status
    r = s.render_current()  # what Inspect, Compare, Audit and Export render through
    assert trained_text(smol_tok, r.input_ids, r.labels) == [a + "<|im_end|>" for a in ANSWERS]


@pytest.mark.parametrize("text, shown", [
    ("name: x\ntrain:\n  - turns: second\n", "field &#x27;train[0].turns&#x27;: unknown value"),
    ('{"train": [{"parts": ["contnet"]}]}', "did you mean &#x27;content&#x27;"),
    ("train: [", "not valid YAML"),
    ("", "the rules are empty"),
])
def test_invalid_rules_show_the_key_and_fix_and_keep_the_strategy(text, shown):
    s = Session()
    out = apply(s, text)
    assert 'class="errbox"' in out.error and shown in out.error and "Fix:" in out.error
    assert s.settings.strategy == "assistant_only"


def test_each_session_lists_its_own_rules_beside_the_shared_strategies(smol_tok):
    from app import tab_inspect

    s1, s2 = Session(), Session()
    apply(s1, ALL_TURNS)
    apply(s2, USER_LAST)
    shared = [n for n in strategy_names() if "@" not in n]  # built-ins + what the server registered at start
    assert shared[:5] == ["full", "completion_only", "assistant_only", "last_assistant", "response_template"]
    for mine, other in ((s1, s2), (s2, s1)):
        out = tab_inspect.view(mine)
        assert out.strategy["choices"] == shared + [mine.settings.strategy]
        assert out.strategy["value"] == mine.settings.strategy
        assert other.settings.strategy not in out.strategy["choices"]
        assert out.error == ""


def test_app_registrations_are_bounded_and_content_named():
    names = [register_for_app(parse_rules({"name": "same", "train": [{"turns": k}]})) for k in range(MAX_APP_RULES + 5)]
    assert len(set(names)) == MAX_APP_RULES + 5 and all(n.startswith("rules:same@") for n in names)
    assert [n for n in names if get_strategy(n) is not None] == names[5:]


# ------------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def rules_url():
    """The whole app (app.main.build_app), as users get it: the Rules tab beside Inspect, Compare, Audit..."""
    from app.main import build_app, launch_options

    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`; these tests "
                    "must not be skipped.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


TOKENS = "#rules-token-view [data-token-id]"


def dom_tokens(pg) -> list[tuple[int, int]]:
    return pg.eval_on_selector_all(TOKENS, "els => els.map(e => [+e.dataset.tokenId, +e.dataset.label])")


def edit_rules(pg, text: str):
    pg.locator("#rules-code .cm-content").click()
    pg.keyboard.press("Control+A")
    pg.keyboard.press("Delete")
    pg.keyboard.insert_text(text)  # no key events: the editor's auto-indent and bracket closing stay out of it


def test_editing_rules_in_the_browser_changes_the_labels(browser, rules_url, smol_tok):
    ctx = browser.new_context(viewport={"width": 1500, "height": 950})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(rules_url)
        pg.wait_for_selector("#token-view [data-token-id]", timeout=90_000)  # Inspect loaded the default sample
        pg.get_by_role("tab", name="Rules").click()
        pg.wait_for_selector(TOKENS, timeout=60_000)
        toks = dom_tokens(pg)
        ids, labels = [t for t, _ in toks], [lab for _, lab in toks]
        # the example rules (first assistant turn: content + eot), decoded from the page's own data-labels
        assert trained_text(smol_tok, ids, labels) == [ANSWERS[0] + "<|im_end|>"]
        shot(pg, "rules_first_turn")

        edit_rules(pg, ALL_TURNS)
        pg.locator("#rules-apply").click()
        pg.wait_for_selector("#rules-status [data-strategy^='rules:all_turns@']", timeout=40_000)
        pg.wait_for_function(f"() => [...document.querySelectorAll({TOKENS!r})].filter(e => e.dataset.label !== "
                             f"'-100').length > {sum(lab != IGNORE for lab in labels)}", timeout=40_000)
        toks = dom_tokens(pg)
        assert [t for t, _ in toks] == ids  # same tokens, other labels
        assert trained_text(smol_tok, ids, [lab for _, lab in toks]) == [a + "<|im_end|>" for a in ANSWERS]
        applied = pg.locator("#rules-status [data-strategy]").get_attribute("data-strategy")

        # Inspect renders with the applied rules and lists them among the strategies, selected
        pg.get_by_role("tab", name="Inspect").click()
        radio = pg.get_by_role("radio", name=applied, exact=True)
        radio.wait_for(timeout=40_000)
        assert radio.is_checked()
        pg.wait_for_function("(n) => [...document.querySelectorAll('#token-view [data-token-id]')].filter("
                             "e => e.dataset.label !== '-100').length === n",
                             arg=sum(lab != IGNORE for _, lab in toks), timeout=40_000)
        inspect_toks = pg.eval_on_selector_all("#token-view [data-token-id]",
                                               "els => els.map(e => [+e.dataset.tokenId, +e.dataset.label])")
        assert inspect_toks == toks
        names = pg.eval_on_selector_all("#strategy input[type=radio]", "els => els.map(e => e.value)")
        assert [n for n in names if "@" in n] == [applied]
        pg.get_by_role("tab", name="Rules").click()

        edit_rules(pg, USER_LAST)
        pg.locator("#rules-validate").click()  # a preview: the session keeps all_turns
        pg.wait_for_selector("#rules-stats:has-text('rules:user_last@')", timeout=40_000)
        toks = dom_tokens(pg)
        assert trained_text(smol_tok, ids, [lab for _, lab in toks]) == [FIRST[3]["content"]]
        assert pg.locator("#rules-status [data-strategy^='rules:all_turns@']").count() == 1

        edit_rules(pg, "name: broken\ntrain:\n  - role: assistant\n    turns: second\n")
        pg.locator("#rules-apply").click()
        pg.wait_for_selector("#rules-error .errbox:has-text('train[0].turns')", timeout=40_000)
        assert "use all, first, last" in pg.locator("#rules-error").inner_text()
        assert dom_tokens(pg) == toks  # the last good rendering stays
        shot(pg, "rules_error")

        pg.locator(TOKENS).nth(len(toks) - 3).hover()
        tip = pg.locator("#ml-tip")
        tip.wait_for(state="visible", timeout=10_000)
        assert "no rule selects assistant turn 1" in tip.inner_text()
    finally:
        ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def test_invalid_rules_say_the_preview_is_of_the_last_valid_ones(smol_tok):
    s = Session()
    assert preview(s, EXAMPLE_RULES).error == ""
    bad = preview(s, '{"name": "x", "name": "y", "train": [{}]}')
    assert "written twice" in bad.error and "still shows the last valid rules" in bad.error
