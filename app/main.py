"""The MaskLens app: one gr.Blocks with a tab per file (app/tab_*.py). Importing this module has no side effects.

build_app() builds the Blocks; launch_options() holds what Gradio 6 takes at launch (theme, CSS, upload limit, the
login gate); path_policy() says which server folders users may load tokenizers and models from.
Per-user state is one gr.State(Session) shared by the tabs; the only module-level cache is the tokenizer cache.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import gradio as gr
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection

from core.models import cache_dir
from core.paths import PathPolicy
from core.training.runs import runs_root_dir

from .session import Session

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CSS_PATH = ASSETS / "style.css"
MAX_FILE_SIZE = "50mb"

HEADER = """
<div class="ml-header">
  <div class="ml-logo" aria-hidden="true">
    <span class="a"></span><span class="b"></span><span class="a"></span><span class="b"></span><span class="a"></span>
  </div>
  <div class="ml-title">MaskLens<span class="ml-sub">see which tokens your SFT run trains on — and why</span></div>
</div>
"""


# On a narrow screen (a phone) the token view comes first (style.css) and the long option panels start folded:
# their headers stay, one tap opens them. Accordions render after the header, so wait for them.
NARROW_JS = r"""
if (window.matchMedia('(max-width: 700px)').matches) {
  let tries = 0;
  const fold = () => {
    const open = document.querySelectorAll('.fold-narrow > button.label-wrap.open');
    open.forEach((b) => b.click());
    if (!open.length && ++tries < 100) setTimeout(fold, 50);
  };
  fold();
}
"""


def theme() -> gr.themes.Base:
    # Local fonts only: the app must work offline (no Google Fonts).
    return gr.themes.Base(
        primary_hue="emerald", neutral_hue="slate", text_size="sm", spacing_size="sm", radius_size="sm",
        font=["Inter", "IBM Plex Sans", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
        font_mono=["JetBrains Mono", "IBM Plex Mono", "ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    ).set(block_label_text_size="*text_sm", block_title_text_weight="600")


def launch_options(max_file_size: str | int = MAX_FILE_SIZE) -> dict:
    """Keyword arguments for demo.launch(): Gradio 6 takes theme and CSS there, not in gr.Blocks(). Also the
    security defaults: the login gate (active with auth), no FastAPI schema pages, no run history, monitoring or
    MCP server."""
    return {
        "theme": theme(), "css_paths": [CSS_PATH], "max_file_size": max_file_size,
        "app_kwargs": {"middleware": [Middleware(LoginGate)], "openapi_url": None, "docs_url": None,
                       "redoc_url": None},
        "run_history": False, "enable_monitoring": False, "mcp_server": False,
    }


# ------------------------------------------------------------------------------------------------------ security
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches: 127.0.0.0/8, ::1, localhost. "0.0.0.0" and "" are not."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_dirs() -> list[Path]:
    """What a shared app loads by path when the operator names no --allow-dir: the project's assets, MaskLens'
    model cache (the converted embedded checkpoint) and the runs folder (sample generations of finished runs)."""
    return [ASSETS, cache_dir(), runs_root_dir()]


def path_policy(host: str, allow_dirs: list[str] | None = None, no_hub: bool = False,
                operator_paths: list[str | None] | None = None) -> PathPolicy:
    """The folders users may name in the app (tokenizer and model boxes). On loopback the user is the operator:
    any folder, unless --allow-dir is given. Beyond loopback: the --allow-dir folders, else the defaults. What the
    operator named on the command line (--tokenizer DIR) is allowed too. Hub ids stay allowed unless --no-hub."""
    if is_loopback(host) and not allow_dirs:
        return PathPolicy(None, not no_hub)
    dirs = [Path(d) for d in (allow_dirs or default_allowed_dirs())]
    for p in operator_paths or []:
        if p and Path(p).expanduser().is_dir():
            dirs.append(Path(p))
    return PathPolicy.restricted(dirs, allow_hub=not no_hub)


# With a login, these answer without it: the login page and the files it is drawn with. Everything else (the config,
# the API and its schema, the queue, uploads, files, heartbeats, cancel) answers 401 until the login cookie is sent.
_PUBLIC_PATHS = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                 "/manifest.json", "/robots.txt", "/gradio_api/login_check", "/gradio_api/login_check/",
                 "/gradio_api/startup-events"}  # Gradio calls this on itself at launch; it runs them once
_PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
_API_INFO_RE = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_NO_API_INFO = b"window.gradio_api_info = " + json.dumps({"named_endpoints": {}, "unnamed_endpoints": {}}).encode() \
    + b";</script>"


def _logged_in(gradio_app, scope) -> bool:
    """Gradio's own test: the access-token cookie names a token it issued at /login. Fails closed: a Gradio that
    keeps its tokens elsewhere makes every protected request answer 401, never lets one through."""
    tokens, cookie_id = getattr(gradio_app, "tokens", None), getattr(gradio_app, "cookie_id", None)
    if not isinstance(tokens, dict) or not cookie_id:
        return False
    cookies = HTTPConnection(scope).cookies
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return bool(token) and token in tokens


class LoginGate:
    """ASGI middleware, active when the app was launched with auth: a request without the login cookie gets 401
    unless it fetches the login page or its static files, and the login page it gets lists no API endpoints.

    Gradio checks the login on most routes itself; this gate makes it default-deny, so a route Gradio leaves open
    (or adds in a later version) stays closed, and it strips the API description that Gradio 6.31 embeds in the
    page it serves before login."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        gradio_app = scope.get("app")
        if scope["type"] not in ("http", "websocket") or not getattr(gradio_app, "auth", None) \
                or _logged_in(gradio_app, scope):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if path not in _PUBLIC_PATHS and not path.startswith(_PUBLIC_PREFIXES):
            body = json.dumps({"detail": {"error": "Not authenticated", "auth_message": None}}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        if path != "/" or scope.get("method") != "GET":
            return await self.app(scope, receive, send)
        return await self._login_page(scope, receive, send)

    async def _login_page(self, scope, receive, send):
        """The page before login, with the API description emptied (the rest is Gradio's login form)."""
        start, chunks = None, []

        async def capture(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return None
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return None
                body = _API_INFO_RE.sub(lambda _: _NO_API_INFO, b"".join(chunks))
                headers = MutableHeaders(raw=list(start["headers"]))
                headers["content-length"] = str(len(body))
                await send({**start, "headers": headers.raw})
                return await send({"type": "http.response.body", "body": body})
            return await send(message)

        return await self.app(scope, receive, capture)


def build_app(default_data: str | None = None, default_tokenizer: str | None = None) -> gr.Blocks:
    """The whole app. default_data / default_tokenizer: what a page opens with (CLI --data / --tokenizer)."""
    from . import tab_audit, tab_compare, tab_export, tab_inspect, tab_rules, tab_templates, tab_train  # noqa: PLC0415
    from . import tab_experiments  # noqa: PLC0415

    with gr.Blocks(title="MaskLens", fill_width=True) as demo:
        gr.HTML(HEADER, js_on_load=NARROW_JS)
        session = gr.State(Session())
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:  # every tab in sight, also on a phone
            with gr.Tab("Inspect", id="inspect", elem_id="tab-inspect"):
                inspect = tab_inspect.build_inspect_tab(session)
            with gr.Tab("Rules", id="rules", elem_id="tab-rules") as rules_tab:
                rules = tab_rules.build_rules_tab(session)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare = tab_compare.build_compare_tab(session)
            with gr.Tab("Templates", id="templates", elem_id="tab-templates") as templates_tab:
                templates = tab_templates.build_templates_tab(session)
            with gr.Tab("Audit", id="audit", elem_id="tab-audit"):
                audit = tab_audit.build_audit_tab(session)
            with gr.Tab("Export", id="export", elem_id="tab-export") as export_tab:
                export = tab_export.build_export_tab(session)
            with gr.Tab("Train", id="train", elem_id="tab-train") as train_tab:
                train = tab_train.build_train_tab(session)
            with gr.Tab("Experiments", id="experiments", elem_id="tab-experiments") as experiments_tab:
                experiments = tab_experiments.build_experiments_tab(session)

        # Tabs that show the Inspect tab's current state refresh when opened.
        compare_tab.select(**compare["args"])
        rules_tab.select(**rules["refresh"])
        # Rules -> Inspect: applied rules are the session's strategy; Inspect re-renders with them and lists them
        # (each session sees its own rules:<name>@<digest> beside the registry's shared strategies).
        rules["applied"].then(tab_inspect.view, [session], inspect.outputs)
        templates_tab.select(**templates["refresh"])
        export_tab.select(**export["refresh"])
        export_tab.select(**export["formats"])
        train_tab.select(**train["estimate"])  # the estimate follows the data and masking chosen in Inspect
        experiments_tab.select(**experiments["refresh"])
        # Audit -> Inspect: a problem row opens its example there.
        audit["problems"].select(tab_audit.on_select_problem, [session], inspect.outputs + [tabs])
        # Templates -> Inspect: use the generated {% generation %} twin.
        templates["use"].click(tab_inspect.on_use_template, [session, templates["marked"]],
                               inspect.outputs + [inspect.chat_template, tabs, templates["proof"]])
        demo.load(tab_inspect.make_loader(default_data, default_tokenizer), [], inspect.load_outputs)
    queue_as_heavy(demo, HEAVY_TRIGGERS)
    demo.queue(default_concurrency_limit=8)
    return demo


# Buttons whose events work over a whole dataset; tabs that do not pass tab_audit.HEAVY themselves get it here.
HEAVY_TRIGGERS = ("export-run",)


def queue_as_heavy(demo: gr.Blocks, elem_ids: tuple[str, ...]) -> None:
    """Put the events triggered by these components in the "heavy" queue (tab_audit.HEAVY: one at a time across all
    sessions). Gradio reads concurrency_id/limit when an event is first queued, so this holds until launch."""
    from .tab_audit import HEAVY  # noqa: PLC0415

    ids = {bid for bid, b in demo.blocks.items() if getattr(b, "elem_id", None) in elem_ids}
    for fn in demo.fns.values():
        if any(bid in ids for bid, _ in fn.targets):
            fn.concurrency_limit, fn.concurrency_id = HEAVY["concurrency_limit"], HEAVY["concurrency_id"]
