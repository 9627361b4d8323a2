"""Security defaults: loopback by default, no remote code unless asked, a login that closes every route, bounded
uploads, no file outside Gradio's own folders, and the folders a shared app loads tokenizers and models from.

The server tests start the real app on 127.0.0.1 (a free port) with --auth and probe it with httpx, unauthenticated
and logged in; every route in the app's route table is probed, so a route a later Gradio adds is covered too.
"""

import ast
import inspect
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from core.errors import MaskLensError
from core.paths import PathPolicy, check_allowed, check_source, get_policy, set_policy

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "alice", "correct horse"
UPLOAD_LIMIT = 64 * 1024


# ------------------------------------------------------------------------------------------------------ defaults
def test_app_listens_on_loopback_by_default():
    from app.__main__ import parse_args
    from app.main import is_loopback

    assert parse_args([]).host == "127.0.0.1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "", "::", "192.168.1.10", "example.org"))


def _trust_keywords(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            yield node


def test_trust_remote_code_is_off_unless_asked():
    from core.cli import build_parser
    from core.models import load_model, load_tokenizer
    from core.training.train import TrainConfig

    assert TrainConfig().trust_remote_code is False
    for fn in (load_tokenizer, load_model):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    args = build_parser().parse_args(["render", "--data", "x.jsonl", "--strategy", "full", "--output", "o.jsonl"])
    assert args.trust_remote_code is False
    # No literal True anywhere; the app never passes it (no form field for it): only the CLI flag turns it on.
    for path in [*ROOT.glob("core/*.py"), *ROOT.glob("app/*.py")]:
        for kw in _trust_keywords(path):
            assert not (isinstance(kw.value, ast.Constant) and kw.value.value is True), f"{path}:{kw.lineno}"
            assert not path.parent.name == "app", f"the app passes trust_remote_code at {path}:{kw.lineno}"
    from app.train_view import FORM_FIELDS

    assert "trust_remote_code" not in FORM_FIELDS


# ------------------------------------------------------------------------------------------------------ path policy
@pytest.fixture
def policy():
    """Install a policy for one test; the previous one (normally 'anything') comes back afterwards."""
    previous = get_policy()
    yield set_policy
    set_policy(previous)


def test_check_allowed_resolves_dots_and_symlinks(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "tok").mkdir(parents=True)
    outside.mkdir()
    assert check_allowed(allowed / "tok", [allowed]) == (allowed / "tok").resolve()
    assert check_allowed(allowed, [allowed]) == allowed.resolve()
    (allowed / "link").symlink_to(outside)
    (tmp_path / "alias").symlink_to(allowed)  # the allowed folder reached through a link is still allowed
    assert check_allowed(tmp_path / "alias" / "tok", [allowed]) == (allowed / "tok").resolve()
    for bad in (outside, allowed / ".." / "outside", allowed / "link", allowed / "link" / "x", Path("/etc/passwd"),
                tmp_path / "allowedx"):
        with pytest.raises(MaskLensError, match="outside the allowed folders") as e:
            check_allowed(bad, [allowed])
        assert "--allow-dir" in str(e.value)


def test_check_source_under_a_restricted_policy(tmp_path, policy):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    check_source("/etc", "tokenizer")  # the default policy: anything (the CLI)
    policy(PathPolicy.restricted([allowed]))
    check_source(str(allowed), "tokenizer")
    check_source("HuggingFaceTB/SmolLM2-135M-Instruct", "model")  # hub ids stay allowed
    for bad in ("/etc", "../../etc", "~", str(allowed / ".." / "x"), "./core"):
        with pytest.raises(MaskLensError, match="tokenizer .* is outside the allowed folders"):
            check_source(bad, "tokenizer")
    policy(PathPolicy.restricted([allowed], allow_hub=False))
    with pytest.raises(MaskLensError, match="does not download a model from the hub"):
        check_source("HuggingFaceTB/SmolLM2-135M-Instruct", "model")


def test_app_policy_from_host_and_flags(tmp_path):
    from app.main import ASSETS, path_policy

    assert path_policy("127.0.0.1") == PathPolicy(None, True)
    assert path_policy("127.0.0.1", no_hub=True) == PathPolicy(None, False)
    shared = path_policy("0.0.0.0")
    assert shared.allowed_dirs is not None and ASSETS.resolve() in shared.allowed_dirs and shared.allow_hub
    mine = path_policy("0.0.0.0", [str(tmp_path)], no_hub=True)
    assert mine == PathPolicy((tmp_path.resolve(),), False)
    # On loopback, --allow-dir restricts too; the operator's own --tokenizer DIR stays loadable.
    tok = tmp_path / "tok"
    tok.mkdir()
    assert path_policy("localhost", [str(ASSETS)], operator_paths=[str(tok), None]).allowed_dirs == (
        ASSETS.resolve(), tok.resolve())


def test_shared_app_refuses_tokenizers_and_models_outside_the_allowed_folders(tmp_path, policy, spm_tok_dir):
    from app.session import get_tokenizer
    from app.tab_train import check_model_tokenizer
    from core.models import clear_tokenizer_cache, load_model

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    shutil.copytree(spm_tok_dir, allowed / "spm")
    shutil.copytree(spm_tok_dir, outside)
    (allowed / "escape").symlink_to(outside)
    clear_tokenizer_cache()
    policy(PathPolicy.restricted([allowed]))
    assert len(get_tokenizer(str(allowed / "spm"))) == 32000  # inside: loads
    for name in (str(outside), str(allowed / "escape"), str(allowed / ".." / "outside"), "/etc"):
        with pytest.raises(MaskLensError, match="outside the allowed folders"):
            get_tokenizer(name)
        with pytest.raises(MaskLensError, match="outside the allowed folders"):
            load_model(name)
        with pytest.raises(MaskLensError, match="outside the allowed folders"):  # the Train tab's model box
            check_model_tokenizer(name, None, "embedded")
    # The Inspect tab's tokenizer box shows it as an error and keeps the session's tokenizer.
    from app.session import Session
    from app.tab_inspect import on_tokenizer

    session = Session()
    out = on_tokenizer(session, str(outside))
    assert "outside the allowed folders" in out[7]  # InspectOut.error
    assert session.tokenizer_name == "embedded"
    clear_tokenizer_cache()


def test_app_main_installs_the_policy(monkeypatch, tmp_path, policy):
    import gradio as gr

    from app.__main__ import main

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    assert main(["--host", "0.0.0.0", "--port", "1", "--auth", "u:p", "--allow-dir", str(tmp_path), "--no-hub"]) == 0
    assert get_policy() == PathPolicy((tmp_path.resolve(),), False)
    assert launched["server_name"] == "0.0.0.0" and launched["auth"] == ("u", "p")
    assert launched["max_file_size"] == "50mb"


# ------------------------------------------------------------------------------------------------------ the server
def _free_port() -> int:
    from tests.test_browser import free_port  # noqa: PLC0415  (the ports this machine's tests may serve on)

    return free_port()


@pytest.fixture(scope="module")
def server():
    from app.main import build_app, launch_options

    demo = build_app()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, auth=(USER, PASSWORD), prevent_thread_lock=True,
                quiet=True, **launch_options(UPLOAD_LIMIT))
    try:
        yield demo, f"http://127.0.0.1:{port}"
    finally:
        demo.close()


@pytest.fixture
def anon(server):
    with httpx.Client(base_url=server[1], follow_redirects=False, timeout=20) as c:
        yield c


@pytest.fixture
def logged_in(server):
    with httpx.Client(base_url=server[1], follow_redirects=False, timeout=20) as c:
        r = c.post("/login", data={"username": USER, "password": PASSWORD})
        assert r.status_code == 200, r.text
        yield c


def _routes(app):
    """(path, method) for every route the app serves, Gradio's API router included."""
    out = set()

    def walk(routes):
        for r in routes:
            for cand in getattr(r, "_effective_candidates", None) or []:
                out.update((cand.path, m) for m in cand.original_route.methods or ())
            if hasattr(r, "path") and hasattr(r, "methods"):
                out.update((r.path, m) for m in r.methods or ())
            walk(getattr(r, "routes", []) or [])

    walk(app.routes)
    return sorted(out)


def _concrete(path: str) -> str:
    """A route pattern with its parameters filled in: /gradio_api/file={path_or_url:path} -> ...=/etc/passwd."""
    return re.sub(r"\{([^}:]+)(:[^}]+)?\}", lambda m: "etc/passwd" if m.group(2) else {
        "api_name": "on_settings", "session_hash": "abc123", "size": "192"}.get(m.group(1), "x"), path)


# Answer without a login, by design: the login page (and the files it is drawn with), the login form itself.
PUBLIC = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/robots.txt",
          "/manifest.json", "/gradio_api/startup-events"}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")


def test_every_route_refuses_without_the_login(server, anon):
    demo, _ = server
    routes = _routes(demo.app)
    assert len(routes) > 60 and ("/gradio_api/queue/join", "POST") in routes
    probed = 0
    for pattern, method in routes:
        url = _concrete(pattern)
        r = anon.request(method, url, json={"data": [], "fn_index": 0, "session_hash": "abc123"}
                         if method == "POST" else None)
        probed += 1
        if pattern in PUBLIC or pattern.startswith(PUBLIC_PREFIXES):
            assert r.status_code in (200, 302, 303, 307, 400, 401, 403, 404, 405, 422), (method, url, r.status_code)
            continue
        assert r.status_code == 401, f"{method} {url} answered {r.status_code} without a login: {r.text[:200]}"
        assert method == "HEAD" or "Not authenticated" in r.text
    assert probed == len(routes)


def test_login_page_before_login_carries_no_app_data(anon):
    r = anon.get("/")
    assert r.status_code == 200
    page = r.text
    assert '"auth_required":true' in page.replace(" ", "")
    # Gradio 6.31 embeds the API description in this page; the gate empties it.
    assert re.search(r"window\.gradio_api_info = \{\"named_endpoints\": \{\}, \"unnamed_endpoints\": \{\}\};", page)
    for secret in ("on_settings", "Response template", "assistant_only", "chat_multiturn"):
        assert secret not in page, secret


def test_logged_in_requests_pass_the_gate(logged_in):
    assert logged_in.get("/config").status_code == 200
    info = logged_in.get("/gradio_api/info")
    assert info.status_code == 200 and "/on_settings" in info.json()["named_endpoints"]
    assert "on_settings" in logged_in.get("/").text  # the full page, API description included
    for schema in ("/openapi.json", "/docs", "/redoc"):  # FastAPI's own pages are off, logged in or not
        assert logged_in.get(schema).status_code == 404


def test_wrong_password_gets_nothing(server):
    with httpx.Client(base_url=server[1], timeout=20) as c:
        r = c.post("/login", data={"username": USER, "password": "wrong"})
        assert r.status_code in (400, 401)
        assert c.get("/config").status_code == 401
        assert c.post("/gradio_api/upload", files={"files": ("a.jsonl", b"{}")}).status_code == 401


def test_api_client_needs_the_login(server):
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(server[1], verbose=False)
    client = Client(server[1], auth=(USER, PASSWORD), verbose=False)
    assert "/on_settings" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_uploads_are_size_limited(logged_in):
    r = logged_in.post("/gradio_api/upload", files={"files": ("big.jsonl", b"x" * (UPLOAD_LIMIT + 1))})
    assert r.status_code == 413 and "maximum allowed size" in r.text
    r = logged_in.post("/gradio_api/upload", files={"files": ("small.jsonl", b'{"text": "hi"}\n')})
    assert r.status_code == 200
    stored = r.json()[0]
    got = logged_in.get(f"/gradio_api/file={stored}")  # an upload can be read back: file reads work at all
    assert got.status_code == 200 and got.content == b'{"text": "hi"}\n'


def test_no_file_outside_gradios_folders_can_be_read(server, logged_in):
    r = logged_in.post("/gradio_api/upload", files={"files": ("mine.jsonl", b"{}\n")})
    upload_dir = Path(r.json()[0]).parent
    link = upload_dir / "passwd-link.jsonl"
    link.symlink_to("/etc/passwd")  # a link planted among uploads must not lead out of them
    try:
        up = os.path.relpath("/etc/passwd", upload_dir)
        for target in ("/etc/passwd", up, f"{upload_dir}/{up}", f"{upload_dir}/%2e%2e/%2e%2e/etc/passwd",
                       "..%2f..%2f..%2fetc%2fpasswd", "%2Fetc%2Fpasswd", str(link), str(ROOT / "README.md"),
                       "README.md", "core/models.py", str(ROOT / ".cache"), "~/.bashrc",
                       f"http://127.0.0.1:{server[1].rsplit(':', 1)[1]}/config", "file:///etc/passwd"):
            for prefix in ("/gradio_api/file=", "/gradio_api/file/"):
                r = logged_in.get(prefix + target)
                assert r.status_code in (403, 404), f"{prefix}{target}: {r.status_code}"
                assert "root:" not in r.text and "named_endpoints" not in r.text
    finally:
        link.unlink()


def test_an_api_call_cannot_hand_the_app_a_server_path(logged_in):
    """The upload event takes a file; a client that names /etc/passwd (a file it did not upload) gets an error, and
    nothing of the file comes back."""
    r = logged_in.post("/gradio_api/call/on_upload", json={"data": [{"path": "/etc/passwd",
                                                                  "meta": {"_type": "gradio.FileData"}}]})
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    stream = logged_in.get(f"/gradio_api/call/on_upload/{event_id}").text
    assert "event: error" in stream and "root:" not in stream, stream[:500]
    # The same call with a file it did upload completes: the refusal above is about the path.
    up = logged_in.post("/gradio_api/upload", files={"files": ("mine.jsonl", b'{"text": "hello there"}\n')}).json()[0]
    r = logged_in.post("/gradio_api/call/on_upload", json={"data": [{"path": up, "meta": {"_type": "gradio.FileData"}}]})
    stream = logged_in.get(f"/gradio_api/call/on_upload/{r.json()['event_id']}").text
    assert "event: complete" in stream and "hello there" in stream, stream[:500]



def test_a_sample_name_cannot_reach_the_disk(logged_in):
    """Datasets come from uploads or bundled samples by name; a path in the sample box is refused."""
    for name in ("../../../../etc/passwd", "/etc/passwd", "../README.md"):
        r = logged_in.post("/gradio_api/call/on_sample", json={"data": [name]})
        assert r.status_code == 200, r.text
        stream = logged_in.get(f"/gradio_api/call/on_sample/{r.json()['event_id']}").text
        assert "root:" not in stream and "MaskLens" not in stream, stream[:300]
        assert "event: error" in stream or "unknown sample" in stream, stream[:300]
    from app.session import load_sample

    with pytest.raises(MaskLensError, match="unknown sample"):
        load_sample("../../../../etc/passwd")

def test_login_in_a_real_browser(server):
    """Behind the gate, Gradio's login form still works: Chromium logs in and the token view renders. Needs
    /usr/bin/chromium (see tests/test_browser.py); fails without it."""
    chromium = os.environ.get("MASKLENS_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        pytest.fail(f"Chromium not found at {chromium}: `apt-get install -y chromium`.", pytrace=False)
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page()
            errors, refused = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("response", lambda r: r.status == 401 and refused.append(r.url))
            page.goto(server[1] + "/")
            page.get_by_label("username").fill(USER)
            page.get_by_label("password").fill(PASSWORD)
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("#token-view [data-token-id]", timeout=60_000)
            assert page.locator("#token-view [data-token-id]").count() > 20
            assert not errors, errors
            # Before the login the page asked for nothing it was refused (a gate too tight would show here).
            assert not [u for u in refused if "login_check" not in u], refused
        finally:
            browser.close()
