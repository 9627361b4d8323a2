"""The Experiments tab in a real browser (Playwright + Debian's Chromium, as tests/test_browser.py): write a 2-config x
1-seed experiment of a tiny random Llama, start it, watch the detached driver and its runs finish, read the table.

Needs /usr/bin/chromium; without it this test FAILS, never skips. Served on port 7884 (7881-7889 are this project's).
"""

import os
from pathlib import Path

import pytest

from .conftest import tiny_llama
from .test_browser import ARGS, CHROMIUM, fill_kept, shot

PORT = int(os.environ.get("MASKLENS_TEST_PORT_EXPERIMENTS", "7884"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_tok):
    root = tmp_path_factory.mktemp("runs")
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(smol_tok).save_pretrained(path)
    smol_tok.save_pretrained(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_RUNS", str(root))
        yield str(path), root


@pytest.fixture(scope="module")
def url(tiny):
    from app.main import build_app, launch_options

    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=PORT, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield f"http://127.0.0.1:{PORT}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get update && apt-get install -y chromium`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_start_watch_and_read_an_experiment(browser, url, tiny):
    model, root = tiny
    config = (f"data: assets/samples/chat_multiturn.jsonl\nmodel: {model}\nheld_out: 2\nseeds: [1]\n"
              "train: {max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 2}\n"
              "eval: {max_new_tokens: 3, every_steps: 1}\n"
              "configs:\n  - {name: masked, strategy: assistant_only}\n"
              "  - {name: weighted, strategy: assistant_only, prompt_loss_weight: 0.2}\n")
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#token-view [data-token-id]", timeout=60_000)
    page.get_by_role("tab", name="Experiments").click()
    fill_kept(page.locator("#exp-name input, #exp-name textarea").first, "ui-exp")
    editor = page.locator("#exp-config .cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(config)
    page.locator("#exp-start").click()
    page.wait_for_selector("#exp-message :text('Started')", timeout=30_000)
    page.wait_for_selector("#exp-status [data-status='running'], #exp-status [data-status='completed']",
                           timeout=120_000)
    page.wait_for_selector("#exp-status [data-status='completed']", timeout=400_000)
    page.wait_for_function("() => document.querySelector('#exp-summary').innerText.includes('weighted')",
                           timeout=30_000)
    table = page.locator("#exp-summary").inner_text()
    for text in ("base", "masked", "weighted", "no interval (1 seed)"):
        assert text in table, table
    runs_table = page.locator("#exp-runs").inner_text()
    assert runs_table.count("completed") == 2, runs_table
    assert "cannot be told from seed noise" in page.locator("#exp-pairs").inner_text()
    shot(page, "experiments", full_page=True)
    assert (root / "ui-exp" / "results.json").is_file() and (root / "ui-exp" / "report.png").is_file()
    ctx.close()
    assert not errors, errors
