"""Chat templates rendered in this process: transformers' `render_jinja_template`, the same texts, faster, and safe
when threads render at once.

transformers 5.23 renders with one lru-cached Template per template string, whose environment carries the
`{% generation %}` extension (AssistantTracker). That extension keeps the spans of the conversation being rendered
in its own state, so two threads rendering with one template at the same time break each other: "AssistantTracker
should not be reused before closed", or, when one of them renders without tracking, its generation blocks land in
the other's spans (wrong labels, silently). MaskLens renders chunks in two threads (core.parallel) and the app serves
requests in threads, so each thread here compiles its own Template, in its own copy of transformers' environment:
the same filters, globals, extensions and sandbox policy, nothing shared that rendering writes.

Two costs of transformers' path are also cut, the output staying identical (tests/test_jinja_render.py compares
texts and generation spans with render_jinja_template over generated conversations and templates):
- The sandbox checks every attribute a template reads (`loop.first`, `message.content.startswith`, `ns.flag`) with
  isinstance tests against abstract base classes, once per access (0.3 s per 20,000 conversations). For the exact
  built-in types, jinja's loop object and namespaces that check depends only on the type and the attribute name, so
  it is taken once per (type, name) from jinja's own checks and remembered (_Sandbox.getattr); what depends on the
  value (a str.format method is wrapped) is still checked on every read; any other object is checked every time.
  `message.content` on a dict (no such attribute: jinja reads the item) goes to the item at once, and a built-in
  value's method (`.startswith`, `.split`) is called without asking whether it carries jinja's marks (it cannot).
- transformers rebuilds every conversation from plain JSON types (_plain_template_data) so that rich objects cannot
  reach the template. Rows read from JSON already are plain: they are checked (a walk that allocates nothing) and
  passed as they are; anything else is rebuilt by transformers' own function (0.2 s per 20,000 conversations).

Example:
    texts, spans = render_conversations(tpl, [[{"role": "user", "content": "Hi"}]], return_generation=True)
"""

from __future__ import annotations

import threading
from inspect import isfunction, ismethod
from types import BuiltinMethodType

from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_TEMPLATES = 16  # compiled templates kept per thread, cleared when full (40-250 KB each: TRL qwen3 to gemma4)

# Types whose attributes pass or fail the sandbox's check (is_safe_attribute) by type and name alone: isinstance
# answers the same for every instance and none of them is a function, method, type, frame or mutable-ABC registrant by
# instance. Only exact types (not subclasses); transformers' namespace class is added with its environment.
_FIXED_TYPES = {str, int, float, bool, type(None), dict, list, tuple, LoopContext, Namespace}
# Of those, the types whose instances have no attributes of their own: an attribute name the type lacks is absent on
# every instance, so `message.content` on a dict always means the item.
_NO_OWN_ATTRIBUTES = frozenset({str, int, float, bool, type(None), dict, list, tuple})
_SAFE: set[tuple[type, str]] = set()  # (type, attribute) whose check passed: read without checking again
_ITEMS: set[tuple[type, str]] = set()  # (type, name) with no such attribute: the item is read (jinja's fallback)
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})

_local = threading.local()


class _Sandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox (ImmutableSandboxedEnvironment) with its attribute verdicts remembered for _FIXED_TYPES.
    What depends on the value is still checked on every read (a str.format method is wrapped, as jinja does)."""

    def getattr(self, obj, attribute):
        key = (type(obj), attribute)
        if key in _ITEMS:  # jinja's path when the attribute is missing: the item, else undefined
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        if key in _SAFE:
            try:
                value = getattr(obj, attribute)
            except AttributeError:  # (a namespace without it, a loop property over an odd iterable)
                return super().getattr(obj, attribute)
            fmt = self.wrap_str_format(value)
            return value if fmt is None else fmt
        if key[0] in _FIXED_TYPES and type(attribute) is str:
            try:
                value = getattr(obj, attribute)
            except AttributeError:
                if key[0] in _NO_OWN_ATTRIBUTES:
                    _ITEMS.add(key)
                return super().getattr(obj, attribute)
            if self.is_safe_attribute(obj, attribute, value):
                _SAFE.add(key)
        return super().getattr(obj, attribute)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805  (jinja's own signature)
        """A method of a built-in value (`message.content.startswith(...)`, reached through getattr's checks) is
        called as jinja calls it, without asking whether it is unsafe or takes the context: such a method can carry
        neither mark. Anything else goes through jinja's checks."""
        if type(__obj) is BuiltinMethodType and type(__obj.__self__) in _NO_OWN_ATTRIBUTES:
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            try:
                return __obj(*args, **kwargs)
            except StopIteration:
                return __context.environment.undefined("value was undefined because a callable raised a"
                                                       " StopIteration exception")
        return super().call(__context, __obj, *args, **kwargs)


def _environment_copy(base):
    """A copy of transformers' environment `base` for one thread: its own extension instances (and the methods they
    registered on the environment, AssistantTracker's activate_tracker), everything else shared read-only."""
    cls = _Sandbox if type(base) is ImmutableSandboxedEnvironment else type(base)
    ns = base.globals.get("namespace")
    if isinstance(ns, type) and issubclass(ns, Namespace):
        _FIXED_TYPES.add(ns)  # transformers' TemplateNamespace (it refuses underscore names when set)
    env = object.__new__(cls)
    env.__dict__.update(base.__dict__)
    env.extensions = {}
    owners = {}
    for key, ext in base.extensions.items():
        env.extensions[key] = ext.bind(env)
        owners[id(ext)] = env.extensions[key]
    for name, value in base.__dict__.items():
        owner = getattr(value, "__self__", None)
        if ismethod(value) and id(owner) in owners:
            setattr(env, name, getattr(owners[id(owner)], value.__func__.__name__))
    return env


def compiled_template(template: str):
    """This thread's compiled Template for a template string, in its copy of transformers' environment."""
    cache = getattr(_local, "templates", None)
    if cache is None:
        cache = _local.templates = {}
    compiled = cache.get(template)
    if compiled is None:
        env = getattr(_local, "environment", None)
        if env is None:
            from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: PLC0415

            env = _local.environment = _environment_copy(_compile_jinja_template("").environment)
        if len(cache) >= MAX_TEMPLATES:
            cache.clear()
        compiled = cache[template] = env.from_string(template)
    return compiled


def is_plain(value) -> bool:
    """True when value is made only of exact JSON types (dict with str keys, list, str, int, float, bool, None): what
    transformers' _plain_template_data would rebuild unchanged. Example: [{"role": "user"}] -> True."""
    t = type(value)
    if t in _PLAIN_SCALARS:
        return True
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _PLAIN_SCALARS and not is_plain(v)):
                return False
        return True
    if t is list:
        for v in value:
            if type(v) not in _PLAIN_SCALARS and not is_plain(v):
                return False
        return True
    return False


def render_conversations(template: str, conversations: list, tools=None, add_generation_prompt: bool = False,
                         return_generation: bool = False, **kwargs) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """transformers 5.23's render_jinja_template(conversations=..., tools=..., chat_template=template,
    return_assistant_tokens_mask=return_generation, add_generation_prompt=..., **kwargs), without documents or
    continue_final_message: (texts, generation spans per conversation, [] when return_generation is False). Errors
    are transformers' (jinja's TemplateError, SecurityError, TypeError...)."""
    from transformers.utils.chat_template_utils import (  # noqa: PLC0415
        _alias_reasoning_fields, _plain_template_data, _render_with_assistant_indices, get_json_schema)

    compiled = compiled_template(template)
    schemas = None
    if tools is not None:
        schemas = []
        for tool in tools:
            if isinstance(tool, dict):
                schemas.append(tool)
            elif isfunction(tool) or ismethod(tool):
                schemas.append(get_json_schema(tool))
            else:
                raise ValueError("Tools should either be a JSON schema, or a callable function with type hints and a "
                                 "docstring suitable for auto-conversion to a schema.")
    schemas = _plain_template_data(schemas)
    kwargs = _plain_template_data(kwargs)
    texts: list[str] = []
    spans: list = []
    for chat in conversations:
        if hasattr(chat, "messages"):  # a transformers Conversation
            chat = chat.messages
        if not is_plain(chat):
            chat = _plain_template_data(chat)
        for message in chat:
            if not isinstance(message, dict):
                raise TypeError(f"Chat messages should be dicts, dataclasses or pydantic models, but got {message!r}.")
        chat = _alias_reasoning_fields(chat)  # a new list: the caller's is never edited
        if return_generation:
            text, gen = _render_with_assistant_indices(compiled_template=compiled, messages=chat, tools=schemas,
                                                       documents=None, add_generation_prompt=add_generation_prompt,
                                                       **kwargs)
            spans.append(gen)
        else:
            text = compiled.render(messages=chat, tools=schemas, documents=None,
                                   add_generation_prompt=add_generation_prompt, **kwargs)
        texts.append(text)
    return texts, spans
