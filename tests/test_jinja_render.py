"""core.masking.jinja_render renders exactly as transformers' render_jinja_template does: the same texts, generation
spans and errors, over generated conversations and every chat template the tests ship (TRL 1.16's own and their
training twins, axolotl's, unsloth's, the property tests' ones); the sandbox refuses what transformers' refuses; and
threads rendering one `{% generation %}` template at once no longer break each other (they did with transformers'
shared Template: "AssistantTracker should not be reused before closed", or spans of one thread in another's).
"""

from __future__ import annotations

import datetime
import enum
import sys
import threading
from pathlib import Path

import pytest
import trl
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jinja2.runtime import LoopContext
from transformers.utils.chat_template_utils import render_jinja_template

from core.masking import jinja_render as J
from core.masking.templates import has_generation_markers
from tests.test_properties import TEMPLATES, TOOLS, conversations, plain_heavy_conversations

ROOT = Path(__file__).resolve().parent
_TRL = sorted((Path(trl.__file__).parent / "chat_templates").glob("*.jinja"))
_FILES = sorted((ROOT / "assets" / "templates").rglob("*.jinja"))
ALL = {f"trl/{p.stem}": p.read_text() for p in _TRL}
ALL.update({f"{p.parent.name}/{p.stem}": p.read_text() for p in _FILES})
ALL.update({f"props/{k}": v[0] for k, v in TEMPLATES.items() if v[0] is not None})
ALL["smollm2"] = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                  "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                  "{% endif %}")
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def outcome(fn):
    """What a render gave: ("ok", texts, spans) or ("error", type name, message)."""
    try:
        texts, spans = fn()
        return ("ok", list(texts), [list(s) for s in spans])
    except Exception as e:  # noqa: BLE001  (the comparison is of errors too)
        return ("error", type(e).__name__, str(e))


def both(template, convos, tools=None, agp=False, gen=False, **kw):
    theirs = outcome(lambda: render_jinja_template(conversations=convos, tools=tools, chat_template=template,
                                                   return_assistant_tokens_mask=gen, add_generation_prompt=agp, **kw))
    ours = outcome(lambda: J.render_conversations(template, convos, tools=tools, add_generation_prompt=agp,
                                                  return_generation=gen, **kw))
    return theirs, ours


def test_templates_are_many():
    assert len(_TRL) >= 60 and len(_FILES) >= 35
    assert sum(has_generation_markers(t) for t in ALL.values()) >= 30  # training twins: the tracker is exercised


@pytest.mark.parametrize("name", sorted(ALL))
@settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.one_of(conversations(), plain_heavy_conversations()), min_size=1, max_size=3),
       agp=st.booleans(), with_tools=st.booleans(), thinking=st.sampled_from([None, True, False]))
def test_same_texts_spans_and_errors_as_transformers(name, rows, agp, with_tools, thinking):
    template = ALL[name]
    kw = dict(SPECIAL)
    if thinking is not None:
        kw["enable_thinking"] = thinking
    convos = [r["messages"] for r in rows]
    for gen in ((False, True) if has_generation_markers(template) else (False,)):
        theirs, ours = both(template, convos, TOOLS if with_tools else None, agp, gen, **kw)
        assert ours == theirs, (name, gen)


class Role(str, enum.Enum):
    USER = "user"


@pytest.mark.parametrize("content", [
    "plain", ("a", "tuple"), datetime.date(2026, 12, 6), 3.5, None, {"nested": [1, 2.5, True, None]},
    [{"type": "text", "text": "part"}], Role.USER])
@pytest.mark.parametrize("name", ["smollm2", "trl/qwen3_training", "trl/gemma3", "axolotl/llama4"])
def test_values_that_are_not_plain_json_render_as_transformers_rebuilds_them(name, content):
    convo = [{"role": "user", "content": content}, {"role": Role.USER, "content": "x", "extra": content},
             {"role": "assistant", "content": "ok"}]
    theirs, ours = both(ALL[name], [convo], gen=has_generation_markers(ALL[name]), **SPECIAL)
    assert ours == theirs
    assert not J.is_plain(convo)  # the Enum role: rebuilt by transformers' own function


def test_is_plain():
    assert J.is_plain([{"role": "user", "content": [{"type": "text", "text": "x"}], "n": 1, "w": 0.5, "b": None}])
    for bad in ([("a",)], [{1: "int key"}], [Role.USER], [{"d": datetime.date.today()}], (1,), [{"x": {"y": {2}}}]):
        assert not J.is_plain(bad), bad


HOSTILE = [
    "{{ ''.__class__ }}", "{{ (1).__class__.__mro__ }}", "{{ messages.__class__.__subclasses__() }}",
    "{% for m in messages %}{{ loop.__class__ }}{% endfor %}",
    "{% for m in messages %}{{ loop._iterator }}{% endfor %}",
    "{{ messages.append(1) }}", "{{ messages.pop() }}", "{{ messages[0].update({'a': 1}) }}",
    "{{ messages[0].clear() }}", "{{ messages[0].setdefault('x', 1) }}", "{{ '{0.__class__}'.format(1) }}",
    "{{ 'a{0}'.format(messages[0].content) }}", "{{ '{x}'.format_map({'x': 1}) }}", "{{ namespace(_x=1) }}",
    "{{ dict.__init__ }}", "{{ raise_exception.__globals__ }}", "{{ range.__self__ }}",
    "{% set ns = namespace(a=1) %}{% set ns._b = 2 %}{{ ns.a }}", "{{ lipsum.__globals__ }}",
    "{% for m in messages %}{{ loop.cycle('a', 'b') }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
    "{{ loop.index0 }}{{ loop.revindex }}{{ loop.previtem is defined }}{{ loop.changed(m.role) }}{% endfor %}",
    "{{ messages[0].items() | list }}{{ messages[0].content.upper() }}{{ messages[0].keys() | list }}",
    "{{ messages[0].content.__len__() }}", "{{ messages | tojson }}{{ (messages | length) * 2 }}",
    # namespaces: verdicts by name, the value still checked (a stored str.format is wrapped)
    "{% set ns = namespace(a=1, f='x{0}'.format, s=messages[0].content) %}{{ ns.a }}{{ ns.f('y') }}{{ ns.s.upper() }}"
    "{{ ns.missing is defined }}{% set ns.a = 2 %}{{ ns.a }}",
    "{% set ns = namespace(g='{0.__class__}'.format) %}{{ ns.g(1) }}",
    "{% set ns = namespace(d=messages[0]) %}{{ ns.d.role }}{{ ns.d.nope is defined }}{{ ns.__class__ }}",
    # a dict's attribute wins over its item; a name it lacks reads the item, else undefined
    "{% set d = {'items': 1, 'content': 2} %}{{ d.items is callable }}{{ d.content }}{{ d.nope is defined }}"
    "{{ d.get('content') }}",
    "{{ messages[0].role }}{{ messages[0].nope }}{{ messages[1].content }}{{ messages.role is defined }}",
    "{{ messages[0].content.nope is defined }}{{ (3).real }}{{ (2.5).imag }}{{ none.x is defined }}",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_the_sandbox_refuses_what_transformers_refuses(template):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    for _ in range(2):  # the second time through remembered verdicts
        theirs, ours = both(template, [convo])
        assert ours == theirs, template
    for typ, attr in J._ITEMS:  # names the types lack, read as items
        assert not hasattr(typ, attr), (typ, attr)
    for typ, attr in J._SAFE:  # nothing unsafe was remembered (str.format may be: it is wrapped on every read)
        assert not attr.startswith("_") and attr not in ("append", "pop", "update", "clear", "setdefault", "mro"), (
            typ, attr)
    env = J.compiled_template("x").environment
    for _ in range(2):
        fmt = env.getattr("a{0}", "format")
        assert fmt != "a{0}".format and fmt("b") == "ab"  # the sandbox's format, not str.format


def test_remembered_verdicts_are_taken_and_only_for_exact_types():
    J.render_conversations(ALL["smollm2"], [[{"role": "user", "content": "hi"}]], **SPECIAL)
    assert (LoopContext, "first") in J._SAFE  # not vacuous: SmolLM2's loop.first takes the remembered path

    class Sneaky(dict):
        @property
        def keys(self):
            raise RuntimeError("a subclass is checked every time")

    env = J.compiled_template("x").environment
    assert isinstance(env, J._Sandbox)
    env.getattr({}, "keys")
    assert (dict, "keys") in J._SAFE and (Sneaky, "keys") not in J._SAFE
    with pytest.raises(RuntimeError):
        env.getattr(Sneaky(), "keys")


def test_each_thread_has_its_own_template_and_tracker():
    a = J.compiled_template(ALL["trl/qwen3_training"])
    assert J.compiled_template(ALL["trl/qwen3_training"]) is a
    box = []
    t = threading.Thread(target=lambda: box.append(J.compiled_template(ALL["trl/qwen3_training"])))
    t.start()
    t.join()
    b = box[0]
    assert b is not a and b.environment is not a.environment
    ea, eb = (list(x.environment.extensions.values()) for x in (a, b))
    assert not {id(e) for e in ea} & {id(e) for e in eb}
    # each environment's activate_tracker drives its own extension
    assert a.environment.activate_tracker.__self__ in ea and b.environment.activate_tracker.__self__ in eb


def _render_in_threads(render, convos, n_threads=2, rounds=3):
    results, errors = [], []

    def work():
        try:
            for _ in range(rounds):
                results.append(render(convos))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: inside one conversation's render
    try:
        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(before)
    return results, errors


def test_threads_rendering_one_generation_template_at_once_get_their_own_spans():
    template = ALL["trl/qwen3_training"]
    convos = [[{"role": "user", "content": f"question {i} " * 20},
               {"role": "assistant", "content": f"answer {i} " * 30},
               {"role": "user", "content": "more"}, {"role": "assistant", "content": f"yes {i} " * 25}]
              for i in range(150)]
    expected = render_jinja_template(conversations=convos, chat_template=template, return_assistant_tokens_mask=True,
                                     **SPECIAL)
    results, errors = _render_in_threads(
        lambda c: J.render_conversations(template, c, return_generation=True, **SPECIAL), convos)
    assert not errors
    assert len(results) == 6 and all(r == expected for r in results)


def test_builtin_methods_are_called_without_jinja_s_checks_and_the_rest_with_them(monkeypatch):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    seen = []
    real = ImmutableSandboxedEnvironment.call

    def counting(self, context, obj, *args, **kwargs):
        seen.append(getattr(obj, "__name__", repr(obj)))
        return real(self, context, obj, *args, **kwargs)

    monkeypatch.setattr(ImmutableSandboxedEnvironment, "call", counting)
    template = ("{{ messages[0].content.startswith('h') }}{{ messages[0].content.split('i') | list }}"
                "{{ messages | length }}{% set ns = namespace(a=1) %}{{ ns.a }}{{ range(2) | list }}")
    convo = [{"role": "user", "content": "hi"}]
    theirs = outcome(lambda: render_jinja_template(conversations=[convo], chat_template=template))
    assert "startswith" in seen and "split" in seen  # transformers: through jinja's checks
    seen.clear()
    ours = outcome(lambda: J.render_conversations(template, [convo]))
    assert ours == theirs and ours[0] == "ok"
    assert "startswith" not in seen and "split" not in seen  # ours: straight to the built-in method
    assert any(s in ("TemplateNamespace", "safe_range") for s in seen)  # anything else: through jinja's checks
