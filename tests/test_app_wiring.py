"""The app's start-up flags: --rules, --strategy-file and --collator register strategies once, before the app is built,
so every session lists them (in-process through build_app, and in a real `python -m app` server's /config); a bad
file stops the start with exit 2 naming the file and registers nothing."""

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app import session as app_session
from app import tab_inspect
from app.session import DEFAULT_SAMPLE, SAMPLES_DIR, Session, register_startup_strategies
from core.errors import MaskLensError
from core.masking.strategies import strategy_names, unregister
from tests.helpers import trained_text

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"
RULES = ASSETS / "rules" / "first_turn.json"  # assistant turn 0: content + eot; mask_tokens ["</think>"]
STRATEGY_FILE = ASSETS / "user_code" / "no_tool_calls.py"
COLLATOR = ASSETS / "user_code" / "team_collator.py"  # trains only the last assistant answer
NAMES = ["rules:first_turn", "no_tool_calls", "collator:team_collator"]
FIRST = json.loads((SAMPLES_DIR / DEFAULT_SAMPLE).read_text().splitlines()[0])["messages"]
ANSWERS = [m["content"] for m in FIRST if m["role"] == "assistant"]


@pytest.fixture(autouse=True)
def clean_registry():
    before = set(strategy_names())
    rules_before = dict(app_session.STARTUP_RULES)
    yield
    for n in set(strategy_names()) - before:
        unregister(n)
    app_session.STARTUP_RULES.clear()
    app_session.STARTUP_RULES.update(rules_before)


def test_startup_strategies_are_listed_and_render_in_every_session(smol_tok):
    import gradio as gr

    from app.main import build_app

    assert register_startup_strategies([RULES], [STRATEGY_FILE], [COLLATOR]) == NAMES
    demo = build_app()
    radio = next(b for b in demo.blocks.values() if isinstance(b, gr.Radio) and b.label == "Strategy")
    assert [c[1] for c in radio.choices][-3:] == NAMES  # the page every session opens with lists them

    expected = {"rules:first_turn": [ANSWERS[0] + "<|im_end|>"],
                "no_tool_calls": [a + "<|im_end|>" for a in ANSWERS],
                "collator:team_collator": [ANSWERS[-1] + "<|im_end|>\n"]}
    for name in NAMES:
        s = tab_inspect.on_load()[0]  # a fresh page's session
        s.settings.strategy = name
        out = tab_inspect.view(s)
        assert out.error == "", out.error
        assert name in out.strategy["choices"] and out.strategy["value"] == name
        r = s.render_current()
        assert trained_text(smol_tok, r.input_ids, r.labels) == expected[name], name
    # the rules file's mask_tokens and roles join the configuration, as core.rules.rules_config does
    cfg = Session(settings=app_session.Settings(strategy="rules:first_turn", mask_tokens="<|im_start|>")).config()
    assert cfg.mask_tokens == ("<|im_start|>", "</think>") and cfg.train_roles == ("assistant",)


def test_a_bad_file_registers_nothing():
    before = strategy_names()
    with pytest.raises(MaskLensError, match=r"broken_syntax\.py.*line 5"):
        register_startup_strategies([RULES], [ASSETS / "user_code" / "broken_syntax.py"], [COLLATOR])
    assert strategy_names() == before and "rules:first_turn" not in app_session.STARTUP_RULES


@pytest.mark.parametrize("files, match", [
    (([RULES, RULES], [], []), "'rules:first_turn', a strategy already registered by an earlier file"),
    (([], [STRATEGY_FILE, STRATEGY_FILE], []), "'no_tool_calls', a strategy already registered by an earlier file"),
    (([], [], [COLLATOR, COLLATOR]), "'collator:team_collator', a strategy already registered"),
])
def test_a_name_registered_twice_is_an_error(files, match):
    before = strategy_names()
    with pytest.raises(MaskLensError, match=match):
        register_startup_strategies(*files)
    assert strategy_names() == before


@pytest.mark.parametrize("argv, shown", [
    (["--rules", str(ASSETS / "rules" / "bad_turns.yaml")], "field 'train[1].turns': unknown value 'second'"),
    (["--strategy-file", str(ASSETS / "user_code" / "broken_raises.py")], "line 11: KeyError while importing"),
    (["--collator", str(ASSETS / "user_code" / "collator_no_factory.py")], "defines no make_collator"),
    (["--rules", "no_such_rules.yaml"], "no such rules file"),
])
def test_main_stops_with_exit_2_naming_the_file(capsys, argv, shown):
    from app.__main__ import main

    before = strategy_names()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: file ") and shown in err and "Fix:" in err and "Traceback" not in err
    assert strategy_names() == before


def test_flags_parse_and_repeat():
    from app.__main__ import parse_args

    a = parse_args([])
    assert (a.rules, a.strategy_file, a.collator) == ([], [], [])
    a = parse_args(["--rules", "a.yaml", "--rules", "b.json", "--strategy-file", "s.py", "--collator", "c.py"])
    assert (a.rules, a.strategy_file, a.collator) == (["a.yaml", "b.json"], ["s.py"], ["c.py"])


# ------------------------------------------------------------------------------------------------------ a real server
def _free_port() -> int:
    from tests.test_browser import free_port  # noqa: PLC0415  (the ports this machine's tests may serve on)

    return free_port()


def test_a_served_app_lists_the_startup_strategies(tmp_path):
    port = _free_port()
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--rules", str(RULES),
                             "--strategy-file", str(STRATEGY_FILE), "--collator", str(COLLATOR)],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, config = time.monotonic() + 180, None
        while time.monotonic() < deadline and config is None:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/config", timeout=2)
                config = r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                time.sleep(0.5)
        assert config is not None, "the app did not answer within 180 s"
        strategy = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "strategy")
        assert [c[1] for c in strategy["props"]["choices"]][-3:] == NAMES
        rules = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "tab-rules")
        assert rules["props"]["label"] == "Rules"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "strategies registered at start: " + ", ".join(NAMES) in (tmp_path / "app.log").read_text()


# ------------------------------------------------------------------------------------------------------ heavy queue
HEAVY_EVENTS = {("audit-run", "click"), ("packing-run", "click"), ("packing-strategy", "input"),
                ("export-run", "click"), ("train-start", "click"), ("train-generate", "click")}


def test_dataset_wide_events_share_the_heavy_queue_and_views_do_not():
    from app.main import build_app

    demo = build_app()
    heavy, views = set(), []
    for f in demo.fns.values():
        where = {(demo.blocks[b].elem_id, ev) for b, ev in f.targets if b in demo.blocks}
        if f.concurrency_id == "heavy":
            assert f.concurrency_limit == 1
            heavy |= where
        else:
            views.append((f, where))
    assert HEAVY_EVENTS <= heavy
    # the packing boxes (max_length, show row) have no elem_id: two submit events of on_pack
    packing = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_pack"]
    assert len(packing) == 4 and all(f.concurrency_id == "heavy" for f in packing)
    inspect_views = [f for f, where in views if ("next", "click") in where or ("strategy", "input") in where]
    assert inspect_views and all(f.concurrency_limit == "default" for f in inspect_views)


def test_heavy_work_queues_one_at_a_time_while_views_answer(monkeypatch, smol_tok):
    """Two sessions audit at once, a third browses Inspect: the audits run one after the other (the heavy queue),
    the third session's views answer while they run."""
    import functools
    import threading

    import gradio as gr
    from gradio_client import Client

    from app import tab_audit
    from app.main import build_app

    spans, lock = [], threading.Lock()
    real = tab_audit.on_audit

    @functools.wraps(real)
    def slow_audit(session, progress=gr.Progress()):
        start = time.monotonic()
        time.sleep(2.0)  # stands for a long audit (without taking a core from the test)
        out = real(session, progress)
        with lock:
            spans.append((start, time.monotonic()))
        return out

    monkeypatch.setattr(tab_audit, "on_audit", slow_audit)
    from tests.test_browser import launch  # noqa: PLC0415  (a free port; again if the server starts late)

    demo = build_app()
    port = launch(demo)
    try:
        url = f"http://127.0.0.1:{port}/"
        a, b, c = (Client(url, verbose=False) for _ in range(3))  # three sessions
        for cl in (a, b, c):
            cl.predict(api_name="/load")
        jobs = [a.submit(api_name="/on_audit"), b.submit(api_name="/on_audit")]
        time.sleep(0.5)
        latencies = []
        while not all(j.done() for j in jobs):
            t = time.monotonic()
            out = c.predict(api_name="/on_next")
            latencies.append(time.monotonic() - t)
            assert 'data-token-id' in out[0]  # the token view (the session State is not an API output)
        results = [j.result() for j in jobs]
    finally:
        demo.close()
    assert all("errbox" not in r[0] for r in results)
    (s1, e1), (s2, e2) = sorted(spans)
    assert s2 >= e1, f"the audits overlapped: {spans}"  # one at a time
    assert len(latencies) >= 3 and max(latencies) < 1.5, latencies  # views answered while the audits ran
