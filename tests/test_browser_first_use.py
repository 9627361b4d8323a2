"""A newcomer's first minutes, in a real browser (Playwright + Debian's Chromium, as tests/test_browser.py): the tooltip
tells the truth after every kind of re-render, the first view explains itself, samples show their feature, the
strategy follows the data, the phone layout puts tokens first, and the small things around them.

Screenshots go to artifacts/screenshots/ (git-ignored).
"""

import re

import pytest

from tests.test_browser import REPO, TOKENS, UPLOAD, app_url, browser, page, shot  # noqa: F401  (fixtures)

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
        pg.locator("#ml-tip").wait_for(state="visible", timeout=5_000)
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
    pg.wait_for_function("(b) => { const tv = document.querySelector('#token-view'); return tv && tv.outerHTML !== b; }",
                         arg=before, timeout=timeout)


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
