"""core.masking.sandbox: any chat template renders within bounded time, memory and output, byte-identical to
core.templates.render, and the test process itself never runs a hostile template: those render only in the worker,
under RLIMIT_AS / RLIMIT_CPU and a parent deadline of 2-3 s here.

- identity: every real template we ship or depend on (TRL's plain and training twins, axolotl's), over the plain,
  reasoning and tool-calling conversation assets, with and without a generation prompt: same text, same
  {% generation %} spans, same error message where the template refuses a conversation;
- the jinja sandbox stays on (Python internals, huge ranges, underscore namespace attributes);
- hostile templates: nested loops printing (output bound), never-ending loops (deadline), one huge string and a
  doubling string (memory bound, the parent's peak RSS unchanged), raise_exception (its message), a worker left
  spinning without its parent (RLIMIT_CPU kills it); after each, a good template renders byte-identically;
- batches: the jobs around a hostile job still render, a template hostile to every job costs a bounded time;
- threads: concurrent callers get their own results, and a hostile render does not hold up another session;
- probe_template, job kwargs that try to swap the template, a worker that sends classes.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import resource
import threading
import time
from pathlib import Path

import pytest

from core.masking import sandbox
from core.errors import MaskLensError
from core.masking.templates import render

ASSETS = Path(__file__).parent / "assets"
NESTED_PRINT = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
NEVER_ENDS = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
HUGE_STRING = "{{ 'x' * 100000 * 100000 }}"
DOUBLING = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
GOOD = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
CONVO = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
FAST = {"timeout_s": 2.0, "max_memory_mb": 256}  # every hostile call in this file runs under these bounds


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ASSETS / "conversations" / name).read_text().splitlines() if line.strip()]


def _templates() -> dict[str, str]:
    import trl

    found = {f"trl/{p.name}": p.read_text() for p in sorted((Path(trl.__file__).parent / "chat_templates").glob("*.jinja"))}
    found.update({f"axolotl/{p.name}": p.read_text()
                  for p in sorted((ASSETS / "templates" / "axolotl").glob("*.jinja"))})
    return found


def _inproc(tok, template, job):
    """core.masking.templates.render, the reference; trusted templates only."""
    try:
        return render(tok, job["messages"], template, tools=job.get("tools"),
                      add_generation_prompt=job.get("add_generation_prompt", False),
                      return_generation=job.get("return_generation", False), special_map=job["kwargs"])
    except MaskLensError as e:
        return e


def _same(a, b) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return isinstance(a, MaskLensError) and isinstance(b, MaskLensError) and str(a) == str(b)
    return a == b


def _good_still_renders(tok):
    jobs = [{"messages": CONVO, "kwargs": dict(tok.special_tokens_map)}]
    assert sandbox.render_batch(tok.chat_template, jobs) == [_inproc(tok, tok.chat_template, jobs[0])]


# --------------------------------------------------------------------------------------------------- identity
def test_every_real_template_renders_identically(smol_tok):
    special = dict(smol_tok.special_tokens_map)
    convs = _rows("plain.jsonl") + _rows("reasoning.jsonl") + _rows("tools.jsonl")
    n_ok = n_err = n_spans = 0
    for name, template in _templates().items():
        jobs = [{"messages": r["messages"], "tools": r.get("tools"), "add_generation_prompt": gp,
                 "return_generation": True, "kwargs": special} for r in convs for gp in (False, True)]
        got = sandbox.render_batch(template, jobs)
        for job, g in zip(jobs, got):
            want = _inproc(smol_tok, template, job)
            assert _same(g, want), f"{name}: sandboxed {g!r:.300} != in-process {want!r:.300}"
            n_err += isinstance(g, Exception)
            n_ok += not isinstance(g, Exception)
            n_spans += 0 if isinstance(g, Exception) else len(g[1])
    assert n_ok > 1000 and n_spans > 500, (n_ok, n_spans)  # the corpus exercises texts and {% generation %} spans
    assert n_err > 0  # and templates that refuse a conversation (same message both ways)


def test_generation_spans_identical_on_a_marked_template(smol_tok):
    from core.masking.checks import add_generation_markers

    marked = add_generation_markers(smol_tok)
    special = dict(smol_tok.special_tokens_map)
    jobs = [{"messages": r["messages"], "return_generation": True, "kwargs": special} for r in _rows("plain.jsonl")]
    got = sandbox.render_batch(marked, jobs)
    want = [_inproc(smol_tok, marked, j) for j in jobs]
    assert got == want
    assert all(spans for _, spans in got)
    for text, spans in got:  # the spans cover the assistant contents, as TRL's assistant mask would
        assert all(text[a:b].endswith("<|im_end|>") for a, b in spans)


def test_render_sandboxed_is_a_drop_in_for_render(smol_tok, monkeypatch):
    from core.masking import template_info

    msgs = _rows("plain.jsonl")[0]["messages"]
    assert sandbox.render_sandboxed(smol_tok, msgs, smol_tok.chat_template, add_generation_prompt=True) == render(
        smol_tok, msgs, smol_tok.chat_template, add_generation_prompt=True)
    with pytest.raises(MaskLensError, match="TemplateError: no") as err:
        sandbox.render_sandboxed(smol_tok, msgs, "{{ raise_exception('no') }}")
    with pytest.raises(MaskLensError) as ref:
        render(smol_tok, msgs, "{{ raise_exception('no') }}")
    assert str(err.value) == str(ref.value)
    want = template_info.analyze_template(smol_tok, smol_tok.chat_template)
    fresh = copy.deepcopy(smol_tok)  # template analysis is cached per tokenizer object: analyse afresh
    monkeypatch.setattr(template_info, "render", sandbox.render_sandboxed)  # every probe through the sandbox
    assert template_info.analyze_template(fresh, fresh.chat_template) == want


def test_none_values_dropped_and_kwargs_passed(smol_tok):
    template = "{% for m in messages %}{{ m.role }}:{{ m.name is defined }};{% endfor %}{{ flavour }}|{{ bos_token }}"
    job = {"messages": [{"role": "user", "content": "a", "name": None}], "kwargs": {"flavour": "mint", "bos_token": "<s>"}}
    assert sandbox.render_batch(template, [job]) == [("user:False;mint|<s>", [])]


def test_job_kwargs_cannot_swap_the_template():
    for key in ("chat_template", "messages", "tools", "conversations"):
        job = {"messages": CONVO, "kwargs": {key: "{{ 'swapped' }}"}}
        (res,) = sandbox.render_batch(GOOD, [job], **FAST)
        assert isinstance(res, MaskLensError) and "multiple values" in str(res), (key, res)


def test_callable_tools_become_their_schema(smol_tok):
    def get_weather(city: str):
        """Weather of a city.

        Args:
            city: the city
        """

    template = "{{ tools[0].function.name }}:{{ tools[0].function.parameters.properties.city.type }}"
    (res,) = sandbox.render_batch(template, [{"messages": CONVO, "tools": [get_weather]}])
    assert res == ("get_weather:string", [])


# ----------------------------------------------------------------------------------------------- the sandbox
@pytest.mark.parametrize("template, needle", [
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{{ cycler.__init__.__globals__ }}", "SecurityError"),
    ("{{ joiner.__init__.__globals__['os'] }}", "SecurityError"),
    ("{{ lipsum.__globals__['os'].popen('id').read() }}", "SecurityError"),
    ("{% set ns = namespace() %}{% set ns.__class__ = 1 %}", "underscore"),
    ("{{ range(10**9) | length }}", "Range too big"),
    ("{% for i in range(100001) %}{% endfor %}", "Range too big"),
])
def test_jinja_sandbox_refuses(template, needle):
    (res,) = sandbox.render_batch(template, [{"messages": CONVO}], **FAST)
    assert isinstance(res, MaskLensError) and needle in str(res) and res.message.startswith(
        "the chat template failed to render"), res


# ------------------------------------------------------------------------------------------ hostile templates
def test_nested_loops_printing_stop_at_the_output_bound(smol_tok):
    t = time.monotonic()
    (res,) = sandbox.render_batch(NESTED_PRINT, [{"messages": CONVO}], template_name="template nested.jinja",
                                  max_output_chars=200_000, **FAST)
    assert time.monotonic() - t < 2.0 + 1.5
    assert isinstance(res, MaskLensError) and res.bound in ("output", "time"), res
    assert "template nested.jinja" in str(res) and "unbounded loops or huge strings" in str(res)
    _good_still_renders(smol_tok)


def test_nested_loops_printing_stop_within_the_deadline_at_default_output(smol_tok):
    t = time.monotonic()
    (res,) = sandbox.render_batch(NESTED_PRINT, [{"messages": CONVO}], **FAST)
    assert time.monotonic() - t < 2.0 + 1.5
    assert isinstance(res, MaskLensError) and res.bound in ("output", "time"), res
    _good_still_renders(smol_tok)


def test_never_ending_template_stops_at_the_deadline(smol_tok):
    t = time.monotonic()
    (res,) = sandbox.render_batch(NEVER_ENDS, [{"messages": CONVO}], template_name="template loop.jinja", **FAST)
    elapsed = time.monotonic() - t
    assert 2.0 <= elapsed < 2.0 + 1.5, elapsed
    assert isinstance(res, MaskLensError) and res.bound == "time"
    assert str(res).startswith("template loop.jinja ran past 2 s"), res
    assert "unbounded loops or huge strings" in res.fix
    _good_still_renders(smol_tok)


@pytest.mark.parametrize("template", [HUGE_STRING, DOUBLING, "{{ [0] * 10**9 }}"])
def test_huge_strings_hit_the_memory_bound_not_the_machine(template, smol_tok):
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    t = time.monotonic()
    (res,) = sandbox.render_batch(template, [{"messages": CONVO}], template_name="template big.jinja", **FAST)
    assert time.monotonic() - t < 2.0 + 1.5
    assert isinstance(res, MaskLensError) and res.bound == "memory", res
    assert "template big.jinja needed more than 256 MB" in str(res)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 64, f"the test process's peak RSS grew by {grown_mb:.0f} MB"
    _good_still_renders(smol_tok)


def test_a_big_string_within_memory_hits_the_output_bound():
    (res,) = sandbox.render_batch("{{ 'x' * 10**7 }}", [{"messages": CONVO}], **FAST)
    assert isinstance(res, MaskLensError) and res.bound == "output" and "2,000,000 characters" in str(res)
    (res,) = sandbox.render_batch("{% generation %}{{ 'x' * 10**7 }}{% endgeneration %}",
                                  [{"messages": CONVO, "return_generation": True}], **FAST)
    assert isinstance(res, MaskLensError) and res.bound == "output"  # built inside a block, checked at the end


def test_what_a_batch_sends_back_is_bounded():
    got = sandbox.render_batch("{{ 'x' * 300000 }}", [{"messages": CONVO}] * 5, max_batch_chars=1_000_000, **FAST)
    assert [len(r[0]) for r in got[:3]] == [300_000] * 3
    assert all(isinstance(r, MaskLensError) and r.bound == "output" and "for this batch" in str(r) for r in got[3:])


def test_raise_exception_gives_its_message(smol_tok):
    template = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok"
    jobs = [{"messages": [{"role": "system", "content": "s"}] + CONVO}, {"messages": CONVO}]
    got = sandbox.render_batch(template, jobs, **FAST)
    assert isinstance(got[0], MaskLensError) and got[0].bound is None
    assert str(got[0]) == str(_inproc(smol_tok, template, {**jobs[0], "kwargs": {}}))
    assert "TemplateError: System role not supported" in str(got[0])
    assert got[1] == ("ok", [])


def test_a_worker_without_its_parent_is_killed_by_its_cpu_limit():
    """The parent never enforces the deadline here: RLIMIT_CPU (deadline + 2 s of CPU) must stop the worker."""
    w = sandbox._Worker()
    try:
        w.wait_ready()
        w.send_bytes(pickle.dumps(("render", NEVER_ENDS, [{"messages": []}], (1.0, 1000, 256, 1000))))
        t = time.monotonic()
        with pytest.raises(sandbox._Lost) as lost:
            w.recv(time.monotonic() + 30, 1 << 20)
        assert lost.value.reason == "time" and "signal" in lost.value.detail, lost.value.detail
        assert time.monotonic() - t < 15
    finally:
        w.kill()


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {r[:26].strip(): tuple(r[26:].split()[:2]) for r in rows}


def test_worker_runs_under_os_limits():
    """While a hostile template renders, its worker's address space and CPU time are capped (read from /proc)."""
    sandbox.render_batch(GOOD, [{"messages": CONVO}])  # a worker up first: limits are set once it has started
    th = threading.Thread(target=sandbox.render_batch, args=(NEVER_ENDS, [{"messages": CONVO}]),
                          kwargs={"timeout_s": 2.0, "max_memory_mb": 300})
    th.start()
    try:
        time.sleep(0.7)
        busy = 0
        for w in [w for w in list(sandbox._POOL._all) if w.ready]:  # (a starting worker runs no template yet)
            lim = _limits(w.proc.pid)
            soft_as, hard_as = (int(x) for x in lim["Max address space"])  # "unlimited" fails here
            assert soft_as <= hard_as <= (sandbox.HARD_MEMORY_MB + 1024) * 2**20  # the ceiling, on every worker
            assert lim["Max core file size"] == ("0", "0")
            if lim["Max cpu time"][0] != "unlimited":  # the one rendering: per-batch CPU and memory limits
                busy += 1
                assert soft_as < hard_as and int(lim["Max cpu time"][0]) < 3600
        assert busy == 1
    finally:
        th.join(30)


def test_worker_sees_no_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    w = sandbox._Worker()
    try:
        w.wait_ready()
        env = Path(f"/proc/{w.proc.pid}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"HF_TOKEN=") for e in env) and b"HF_HUB_OFFLINE=1" in env
    finally:
        w.kill()


# ---------------------------------------------------------------------------------------------------- batches
def test_jobs_around_a_hostile_one_still_render(smol_tok):
    template = ("{% for m in messages %}{% if m.content == 'LOOP' %}{% for i in range(99999) %}{% for j in "
                "range(99999) %}{% endfor %}{% endfor %}{% endif %}{{ m.content }};{% endfor %}")
    jobs = [{"messages": [{"role": "user", "content": c}]} for c in ("a", "b", "LOOP", "c")]
    got = sandbox.render_batch(template, jobs, **FAST)
    assert got[0] == ("a;", []) and got[1] == ("b;", []) and got[3] == ("c;", [])
    assert isinstance(got[2], MaskLensError) and got[2].bound == "time"
    _good_still_renders(smol_tok)


def test_a_template_hostile_to_every_job_costs_bounded_time():
    t = time.monotonic()
    got = sandbox.render_batch(NEVER_ENDS, [{"messages": CONVO}] * 50, timeout_s=1.0, max_memory_mb=256)
    elapsed = time.monotonic() - t
    assert all(isinstance(r, MaskLensError) for r in got)
    assert {r.bound for r in got} <= {"time", "skipped"} and got[-1].bound == "skipped"
    # MAX_KILLS_PER_CALL deadlines plus the restarts between them, not 50 deadlines
    assert elapsed < sandbox.MAX_KILLS_PER_CALL * 1.0 + 15, elapsed


def test_big_batch_matches_in_process(smol_tok):
    from benchmarks.bench_engine import conversations

    special = dict(smol_tok.special_tokens_map)
    jobs = [{"messages": r["messages"], "kwargs": special} for r in conversations(600)]
    got = sandbox.render_batch(smol_tok.chat_template, jobs)  # > one 256 KB frame of results
    assert got == [_inproc(smol_tok, smol_tok.chat_template, j) for j in jobs]


# ---------------------------------------------------------------------------------------------------- threads
def test_concurrent_threads_get_their_own_results(smol_tok):
    special = dict(smol_tok.special_tokens_map)
    templates = {k: f"{k}:" + "{% for m in messages %}{{ m.content }}|{% endfor %}" for k in ("A", "B", "C", "D")}
    out, errors = {}, []

    def work(key):
        try:
            for r in range(5):
                jobs = [{"messages": [{"role": "user", "content": f"{key}{r}-{n}"}], "kwargs": special}
                        for n in range(40)]
                out[(key, r)] = sandbox.render_batch(templates[key], jobs)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in templates]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    for (key, r), res in out.items():
        assert res == [(f"{key}:{key}{r}-{n}|", []) for n in range(40)]
    assert len(out) == 20


def test_a_hostile_render_does_not_hold_up_another_session(smol_tok):
    # both workers up first, so the measurement is not a worker's start-up
    ready = [threading.Thread(target=_good_still_renders, args=(smol_tok,)) for _ in range(2)]
    for th in ready:
        th.start()
    for th in ready:
        th.join(60)
    finished = {}

    def hostile():
        sandbox.render_batch(NEVER_ENDS, [{"messages": CONVO}], timeout_s=3.0, max_memory_mb=256)
        finished["hostile"] = time.monotonic()

    th = threading.Thread(target=hostile)
    th.start()
    time.sleep(0.3)
    t = time.monotonic()
    for _ in range(10):
        _good_still_renders(smol_tok)
    finished["good"] = time.monotonic()
    th.join(30)
    assert finished["good"] < finished["hostile"], "a good session waited for the hostile one"
    assert finished["good"] - t < 2.5


# ------------------------------------------------------------------------------------------ probe and protocol
def test_probe_template(smol_tok):
    special = dict(smol_tok.special_tokens_map)
    assert "MLPROBEa1" in sandbox.probe_template(smol_tok.chat_template, special)
    no_system = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}"
                 "{{ m.content }}{% endfor %}")
    assert sandbox.probe_template(no_system) == "MLPROBEu1MLPROBEa1"
    t = time.monotonic()
    with pytest.raises(MaskLensError, match="pasted template ran past 2 s"):
        sandbox.probe_template(NEVER_ENDS, template_name="the pasted template", timeout_s=2.0, max_memory_mb=256)
    assert time.monotonic() - t < 2.0 + 1.5  # one deadline, not one per probe
    with pytest.raises(MaskLensError, match="TemplateSyntaxError"):
        sandbox.probe_template("{% for m in messages %}")
    with pytest.raises(MaskLensError, match="TemplateError: always"):
        sandbox.probe_template("{{ raise_exception('always') }}")


def test_results_from_a_worker_never_load_classes():
    evil = pickle.dumps([("ok", "x", [threading.Lock])])
    with pytest.raises(pickle.UnpicklingError, match="only plain data"):
        sandbox._PlainUnpickler(io.BytesIO(evil)).load()
    with pytest.raises(sandbox._Lost):
        sandbox._checked([("ok", 1, [])], 1)
    with pytest.raises(sandbox._Lost):
        sandbox._checked([("ok", "a", [])] * 2, 1)  # more results than jobs


def test_empty_batch_starts_nothing():
    assert sandbox.render_batch(GOOD, []) == []


def test_the_worker_renders_with_jinja_render_as_transformers_does(monkeypatch):
    """The worker loads core.masking.jinja_render from its file (it runs as a script): the same results as
    transformers' own module, and the output bound still wraps the Template it renders with."""
    import trl
    import transformers.utils.chat_template_utils as ctu

    fast = sandbox._renderer()
    assert isinstance(fast, sandbox._FastRenderer)
    twin = (Path(trl.__file__).parent / "chat_templates" / "qwen3_training.jinja").read_text()
    jobs = [{"messages": CONVO, "return_generation": True, "kwargs": {"eos_token": "<|im_end|>"}},
            {"messages": CONVO + [{"role": "user", "content": "again"}], "add_generation_prompt": True},
            {"messages": [{"role": "tool", "content": "x"}]}]
    for template in (twin, GOOD, "{{ raise_exception('no ' + messages[0].role) }}"):
        for job in jobs:
            assert sandbox._render_one(fast, template, job) == sandbox._render_one(ctu, template, job)
    bounded = GOOD + "{# a template of its own: the guard stays on its Template #}"
    monkeypatch.setattr(sandbox, "_max_chars", 5)
    assert sandbox._render_one(fast, bounded, jobs[0])[:2] == ("error", "output")
