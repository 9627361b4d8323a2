"""Pure formatting for the app: the token view, stats, findings, error boxes. HTML strings in, HTML strings out.

No gradio and no tokenizer calls here except through ``RenderedExample.tokens``: everything is unit-testable without
a browser. The token view is built in one pass with one small ``<span>`` per token; what a tooltip shows (message,
role, part, rule) is stored once per distinct value in the view's ``data-info`` table, and each token points into it
with ``data-k`` (a 4,000-token conversation has a handful of distinct entries, not 4,000 copies).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable

from core.masking.engine import IGNORE, RenderedExample, TokenInfo
from core.findings import CODES, Finding

from .session import SAMPLES

ROLE_CLASS = {"system": "rs", "user": "ru", "assistant": "ra", "tool": "rt", "developer": "rd"}
ROLE_ORDER = ("system", "developer", "user", "assistant", "tool", None)
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_WS = {" ": "<s>·</s>", "\t": "<s>→</s>", "\n": "<s>↵</s><br>", "\r": "<s>␍</s>"}


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def visible_text(text: str) -> str:
    """A token's text as HTML with whitespace made visible; a newline also breaks the line (inside the token, so that
    the indentation after it starts the next line). Example: " a\\n" -> '<s>·</s>a<s>↵</s><br>'."""
    out = html.escape(text, quote=False)
    if any(c in out for c in _WS):
        out = "".join(_WS.get(c, c) for c in out)
    return out or "<s>∅</s>"


def inline_text(text: str, limit: int = 16) -> str:
    r"""A token's text for a one-line marker: whitespace made visible, no line break, long tokens cut.
    Example: "\n" -> '<s>↵</s>'."""
    t = text if len(text) <= limit else text[:limit - 1] + "…"
    out = html.escape(t, quote=False)
    return "".join(_WS.get(c, c) for c in out).replace("<br>", "") or "<s>∅</s>"


# ------------------------------------------------------------------------------------------------------ token view
# The token view's tooltip: one listener on the component, reading data-k from the hovered token and the view's
# data-info table (no per-token markup beyond id, label and key; a row's fifth entry, when there, is the loss weight
# of tokens weighted between 0 and 1). Survives value updates: the listener sits on `element` itself. Nothing is
# remembered between hovers: Gradio patches a new value into the same elements (the
# .tv div and the spans stay, their attributes and children change), so a cache keyed on an element would describe
# an earlier view. Reading the table and the token list per hover costs well under a millisecond at 4,000 tokens.
TOKEN_VIEW_JS = r"""
const tip = document.getElementById('ml-tip') || Object.assign(document.createElement('div'), {id: 'ml-tip'});
if (!tip.parentNode) document.body.appendChild(tip);
element.addEventListener('mouseover', (e) => {
  const s = e.target.closest && e.target.closest('[data-token-id]');
  if (!s) { tip.style.display = 'none'; return; }
  const tv = s.closest('.tv'); if (!tv) return;
  const toks = tv.querySelectorAll('[data-token-id]');
  const pos = Array.prototype.indexOf.call(toks, s);
  const [msg, role, part, rule, w] = JSON.parse(tv.dataset.info || '[]')[+s.dataset.k] || [null, '', '', ''];
  const lab = s.dataset.label;
  const where = msg === null ? 'template text (no message)' : role ? `message ${msg} (${role})` : `example #${msg + 1}`;
  tip.className = lab === '-100' ? 'tip-n' : 'tip-y';
  const raw = (el) => el.textContent.replace(/·/g, ' ').replace(/→/g, '\t').replace(/↵/g, '\n').replace(/␍/g, '\r')
    .replace(/∅/g, '');
  const lit = (el) => '`' + JSON.stringify(raw(el)).slice(1, -1) + '`';
  // The label shift: labels are unshifted; the model predicts token i from position i-1 (it shifts them itself).
  let shift = '';
  if (lab !== '-100') shift = pos > 0 ? `\npredicted from ${lit(toks[pos - 1])} at ${pos - 1}` :
    '\nnever predicted: no token precedes position 0 (its label is dropped by the shift)';
  const nxt = toks[pos + 1];
  if (nxt && nxt.dataset.label !== '-100') shift += `\nthe output here is trained: it predicts #${pos + 1}`;
  tip.textContent = `#${pos}  id ${s.dataset.tokenId}  label ${lab}${lab === '-100' ? ' (ignored)' : ''}` +
    `${w ? `  weight ${w}` : ''}${s.classList.contains('x') ? '  special' : ''}\n` +
    `${where} · part: ${part}\n${rule}${shift}\ntext ${JSON.stringify(raw(s))}`;
  tip.style.display = 'block';
  const r = s.getBoundingClientRect();
  const x = Math.min(r.left, window.innerWidth - tip.offsetWidth - 8);
  const y = r.bottom + 6 + tip.offsetHeight > window.innerHeight ? r.top - tip.offsetHeight - 6 : r.bottom + 6;
  tip.style.left = Math.max(4, x) + 'px'; tip.style.top = Math.max(4, y) + 'px';
});
element.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
"""


# A finding that names a token (location {"token": n}) scrolls the token view to it and flashes it.
FINDINGS_JS = r"""
element.addEventListener('click', (e) => {
  const f = e.target.closest && e.target.closest('[data-token]');
  if (!f) return;
  const t = document.querySelectorAll('#token-view [data-token-id]')[+f.dataset.token];
  if (!t) return;
  const run = t.closest('details');  // a token inside a folded image run: unfold it
  if (run) run.open = true;
  t.scrollIntoView({block: 'center', behavior: 'smooth'});
  t.classList.add('flash');
  setTimeout(() => t.classList.remove('flash'), 1800);
});
"""


# Parts of a conversational example (core.spans): the underline colour in "part" mode, the legend's order.
PART_CLASS = {"header": "ph", "reasoning": "pr", "content": "pc", "tool_calls": "pt", "eot": "pe", "scaffold": "ps",
              "template": "po", "image": "pi"}
PART_HELP = {
    "header": "role header (the generation prompt supplies it)",
    "reasoning": "think block",
    "content": "content",
    "tool_calls": "tool calls",
    "eot": "end-of-turn",
    "scaffold": "scaffold the template inserts (e.g. an empty think block)",
    "template": "template text outside messages",
    "image": "image tokens (the processor's placeholder run and the markers around it)",
}
UNDERLINES = ("part", "role")


def token_literal(text: str) -> str:
    r"""A token's text as a short literal for messages. Example: "\n" -> "`\\n`", "<|im_end|>" -> "`<|im_end|>`"."""
    return "`" + json.dumps(text, ensure_ascii=False)[1:-1] + "`"


def shift_source(infos: list[TokenInfo], i: int) -> str:
    """What the model sees last when it predicts token i (labels are unshifted: the model shifts them itself).
    Example: shift_source(infos, 42) -> "predicted from `\\n` at 41"."""
    if i <= 0:
        return "never predicted: no token precedes position 0 (its label is dropped by the shift)"
    return f"predicted from {token_literal(infos[i - 1].text)} at {i - 1}"


def trained_run_starts(infos: list[TokenInfo]) -> list[int]:
    """Positions of trained tokens whose previous token is not trained: where a trained run begins."""
    return [t.position for k, t in enumerate(infos)
            if t.label != IGNORE and (k == 0 or infos[k - 1].label == IGNORE)]


def weight_class(w: float) -> str:
    """The shade class of a token trained with a weight strictly between 0 and 1: "w1" (lightest) .. "w9".
    Example: weight_class(0.1) -> "w1"; weight_class(0.5) -> "w5"."""
    return f"w{min(9, max(1, round(w * 10)))}"


def token_view_html(infos: list[TokenInfo], *, elem_id: str = "token-view", diff: Iterable[int] = (),
                    empty: str = "No tokens.", truncated_at_start: int = 0,
                    breaks: dict[int, str] | None = None, underline: str = "part", shift: bool = False) -> str:
    """The token view: one ``<span data-token-id data-label data-k>`` per token, colour-coded by CSS.

    Trained vs ignored comes from ``data-label`` (-100 = ignored). The class gives the role (rs/ru/ra/rt/rd) and the
    part (ph/pr/pc/pt/pe/ps/po/pi); ``underline`` ("part" or "role") says which of the two colours the bar under each
    token. ``x`` marks a special token and ``d`` a token whose label differs between compared configurations;
    ``w w1``..``w9`` a token trained with a loss weight strictly between 0 and 1 (lighter for smaller weights; the
    weight itself is the fifth entry of its data-info row, for the tooltip).
    ``shift`` shows the label shift: before each run of trained tokens a marker names the token the model predicts
    the run's first token from, and that token is outlined (``pv``).
    ``breaks`` puts a labelled marker before some positions (packed rows: document boundaries).
    A run of one repeated image token (part "image", e.g. ``<|image_pad|>`` ×256) is folded into one element that
    unfolds in place (collapse_image_runs, image_run_html); its tokens stay in the view, in order.
    """
    if not infos:
        return f'<div id="{elem_id}" class="tv tv-empty">{esc(empty)}</div>'
    diff = set(diff)
    keys: dict[tuple, int] = {}
    table: list[list] = []
    vis_cache: dict[str, str] = {}
    starts = set(trained_run_starts(infos)) if shift else set()
    before_start = {i - 1 for i in starts if i > 0}

    def span(t: TokenInfo) -> str:
        weighted = 0.0 < t.weight < 1.0
        key = (t.message, t.role, t.part, t.rule, t.weight if weighted else None)
        k = keys.get(key)
        if k is None:
            k = keys[key] = len(table)
            table.append([t.message, t.role or "", t.part, t.rule] + ([f"{t.weight:g}"] if weighted else []))
        v = vis_cache.get(t.text)
        if v is None:
            v = vis_cache[t.text] = visible_text(t.text)
        cls = ROLE_CLASS.get(t.role, "ro")
        pc = PART_CLASS.get(t.part)
        if pc:
            cls += " " + pc
        if t.special:
            cls += " x"
        if t.position in diff:
            cls += " d"
        if t.position in before_start:
            cls += " pv"
        if weighted:
            cls += " w " + weight_class(t.weight)
        out = ""
        if breaks and t.position in breaks:
            out += f'<b class="brk">‖ {esc(breaks[t.position])}</b>'
        if t.position in starts:
            src = shift_source(infos, t.position)
            short = f"from {inline_text(infos[t.position - 1].text)} #{t.position - 1}" if t.position else \
                "#0: no input"
            out += (f'<i class="sft" data-pos="{t.position}" title="{esc(f"#{t.position} is {src}")}">'
                    f"{short} ▸</i>")
        return out + f'<span class="{cls}" data-token-id="{t.id}" data-label="{t.label}" data-k="{k}">{v}</span>'

    image_ids = {t.id for t in infos if t.part == "image"}
    parts = [image_run_html(x, "".join(map(span, x.tokens))) if isinstance(x, ImageRun) else span(x)
             for x in collapse_image_runs(infos, image_ids)]
    mode = "by-role" if underline == "role" else "by-part"
    head = (f'<div id="{elem_id}" class="tv {mode}{" shift" if shift else ""}" data-n="{len(infos)}" '
            f'data-offset="{truncated_at_start}" data-info="{esc(json.dumps(table, ensure_ascii=False))}">')
    return head + "".join(parts) + "</div>"


def legend_html(underline: str = "part", shift: bool = False, weighted: bool = False, images: bool = False) -> str:
    """The token view's key: trained/ignored/special (weighted tokens and image runs when the view has them), then the
    underline colours (parts or roles)."""
    items = ['<span class="lg"><span class="sw sw-y"></span>trained</span>',
             '<span class="lg"><span class="sw sw-n"></span>ignored (label -100)</span>',
             '<span class="lg"><span class="sw sw-x"></span>special token</span>']
    if weighted:
        items.append('<span class="lg" data-legend="weighted"><span class="sw sw-w w2"></span><span class="sw sw-w w5">'
                     '</span><span class="sw sw-w w8"></span>trained with a loss weight between 0 and 1: the paler, '
                     "the smaller (hover for the weight)</span>")
    if images:
        items.append('<span class="lg" data-legend="images"><span class="imgrun-sw">▸ ×N</span>a run of image tokens, '
                     "folded (click to unfold)</span>")
    parts = {p: c for p, c in PART_CLASS.items() if p != "image" or images}
    if underline == "role":
        items += [f'<span class="lg"><span class="ul {c}"></span>{r}</span>'
                  for r, c in (("system", "rs"), ("user", "ru"), ("assistant", "ra"), ("tool", "rt"))]
        items.append('<span class="lg"><span class="ul ro"></span>template</span>')
    else:
        items += [f'<span class="lg" title="{esc(PART_HELP[p])}"><span class="ul {c}"></span>{esc(p)}</span>'
                  for p, c in parts.items()]
    if shift:
        items.append('<span class="lg"><i class="sft">from ↵ #41 ▸</i> the token the model predicts a trained '
                     "run's first token from (outlined)</span>")
    items += ['<span class="lg"><code>·</code> space <code>→</code> tab <code>↵</code> newline</span>',
              '<span class="lg hint">hover a token for id, label, message, part, rule</span>']
    return f'<div class="legend" data-underline="{esc(underline)}">' + "".join(items) + "</div>"


def template_line_html(rendered: RenderedExample | None, label: str | None = None) -> str:
    """One line above the token view: which template produced the tokens (`label`, else the engine's words), and
    whether the twin renders this row differently from the tokenizer's own template."""
    if rendered is None or not rendered.template_label:
        return ""
    extra = ""
    if rendered.inference_text is not None:
        extra = (' · <span class="swapped">the tokenizer\'s own (inference) template renders this row '
                 "differently</span>: tick <i>inference rendering</i> to compare")
    elif rendered.template_swapped:
        extra = " · the tokenizer's own template renders this row identically"
    turn = f" · turn {rendered.turn} (split_turns)" if rendered.turn is not None else ""
    return (f'<div class="tpl-line" data-swapped="{str(rendered.template_swapped).lower()}">Template: '
            f"<b>{esc(label or rendered.template_label)}</b>{turn}{extra}</div>")


def cannot_patch_line_html(template: str, trl_version: str) -> str:
    """The line above the tokens where TRL has no training template for the chat template in use: what is in
    effect, and why, in one plain sentence (the button under it offers the marked template)."""
    return (f'<div class="tpl-line" data-source="own">Template: <b>{esc(template)}</b>, masked by MaskLens: TRL '
            f"{esc(trl_version)} has no training template for this model's chat template (its "
            "<code>assistant_only_loss</code> would stop with an error).</div>")


def notice_html(notice: str) -> str:
    """What the app just set by itself and why (HTML from the app's own strings), or ""."""
    return f'<div class="notice" role="status">{notice}</div>' if notice else ""


_PIECE_RE = None


def _pieces(text: str) -> list[str]:
    """Words, runs of spaces, newlines and single symbols: the units the inference diff compares."""
    global _PIECE_RE
    if _PIECE_RE is None:
        import re  # noqa: PLC0415

        _PIECE_RE = re.compile(r"\n|[^\S\n]+|\w+|[^\w\s]", re.UNICODE)
    return _PIECE_RE.findall(text)


def _diff_text(pieces: list[str], ranges: list[tuple[int, int]], cls: str) -> str:
    marks = [False] * len(pieces)
    for a, b in ranges:
        for k in range(a, b):
            marks[k] = True
    out, k = [], 0
    while k < len(pieces):
        j = k
        while j < len(pieces) and marks[j] == marks[k]:
            j += 1
        chunk = html.escape("".join(pieces[k:j]), quote=False).replace("\n", "<s>↵</s>\n")
        out.append(f'<mark class="{cls}">{chunk}</mark>' if marks[k] else chunk)
        k = j
    return "".join(out)


def _only(n: int, cls: str) -> str:
    return f'<span class="{cls}">{n} characters only here</span>' if n else "nothing only here"


def inference_html(rendered: RenderedExample | None) -> str:
    """The training rendering beside the tokenizer's own (inference) rendering, what differs highlighted."""
    if rendered is None:
        return ""
    if rendered.inference_text is None:
        why = ("the tokenizer's own template renders this row exactly as the training template does"
               if rendered.template_swapped else
               "these tokens come from the tokenizer's own template (no training-template swap)")
        return f'<div class="infer-none">No difference to show: {esc(why)}.</div>'
    import difflib  # noqa: PLC0415

    a, b = _pieces(rendered.text), _pieces(rendered.inference_text)
    sm = difflib.SequenceMatcher(None, a, b, autojunk=len(a) > 20_000)
    only_a, only_b = [], []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("replace", "delete"):
            only_a.append((i1, i2))
        if tag in ("replace", "insert"):
            only_b.append((j1, j2))
    n_a = sum(len("".join(a[i:j])) for i, j in only_a)
    n_b = sum(len("".join(b[i:j])) for i, j in only_b)
    return ('<div class="infer">'
            f'<div class="infer-col"><div class="infer-h">training rendering (what is tokenized and trained) · '
            f'{_only(n_a, "only-train")}</div>'
            f'<pre class="infer-text" data-side="training">{_diff_text(a, only_a, "only-train")}</pre></div>'
            f'<div class="infer-col"><div class="infer-h">the tokenizer\'s own (inference) rendering · '
            f'{_only(n_b, "only-infer")}</div>'
            f'<pre class="infer-text" data-side="inference">{_diff_text(b, only_b, "only-infer")}</pre></div>'
            "</div>")


# ------------------------------------------------------------------------------------------------------ stats
def _counts(infos: list[TokenInfo], key) -> dict:
    """key(token) -> [tokens, trained (weight 1), weighted (0 < weight < 1)], in first-seen order."""
    out: dict = {}
    for t in infos:
        c = out.setdefault(key(t), [0, 0, 0])
        c[0] += 1
        c[1] += t.label != IGNORE and t.weight >= 1.0
        c[2] += 0.0 < t.weight < 1.0
    return out


def token_stats(infos: list[TokenInfo]) -> dict:
    """Counts for the stats panel; "trained" counts full-weight tokens, "weighted" those with a loss weight strictly
    between 0 and 1. Example: {"tokens": 179, "trained": 114, "weighted": 0, "share": 0.637, "roles": {...}}."""
    n = len(infos)
    trained = sum(1 for t in infos if t.label != IGNORE and t.weight >= 1.0)
    weighted = sum(1 for t in infos if 0.0 < t.weight < 1.0)
    return {"tokens": n, "trained": trained, "weighted": weighted, "share": trained / n if n else 0.0,
            "special": sum(1 for t in infos if t.special),
            "roles": {k: {"tokens": v[0], "trained": v[1], "weighted": v[2]}
                      for k, v in _counts(infos, lambda t: t.role).items()}}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def part_stats(infos: list[TokenInfo]) -> dict[str, list[int]]:
    """part -> [tokens, trained, weighted], in PART_CLASS order then any other part.
    Example: {"reasoning": [40, 40, 0], ...}."""
    order = list(PART_CLASS)
    return dict(sorted(_counts(infos, lambda t: t.part).items(),
                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def loss_share_html(rendered: RenderedExample) -> str:
    """Where a loss weight lies strictly between 0 and 1: how many tokens carry one, and their share of the loss's
    weight sum (training minimises sum(w * nll) / sum(w)); "" without such tokens."""
    if not rendered.n_weighted:
        return ""
    total = rendered.weight_sum
    part = sum(w for w in rendered.weights if 0.0 < w < 1.0)
    return (f'<div class="wshare" data-weighted="{rendered.n_weighted}" data-weight-sum="{total:.4g}">'
            f"<b>{rendered.n_weighted}</b> weighted tokens (0 &lt; w &lt; 1): Σw = {total:.4g} over the example, of "
            f"which they carry <b>{pct(part / total if total else 0)}</b> (training minimises Σ w·nll / Σ w)</div>")


def stats_html(rendered: RenderedExample, infos: list[TokenInfo]) -> str:
    s = token_stats(infos)
    weighted = s["weighted"] > 0
    wcol = "<th>weighted</th>" if weighted else ""

    def row(cells: str, v: list[int]) -> str:
        n, tr, w = v
        return (f"{cells}<td>{n}</td><td>{tr}</td>" + (f"<td>{w}</td>" if weighted else "")
                + f"<td>{pct(tr / n if n else 0)}</td></tr>")

    rows = [row(f'<tr><td><span class="ul {ROLE_CLASS.get(role, "ro")}"></span>{esc(role or "template")}</td>',
                [v["tokens"], v["trained"], v["weighted"]])
            for role, v in sorted(s["roles"].items(), key=lambda kv: ROLE_ORDER.index(kv[0])
                                  if kv[0] in ROLE_ORDER else 99)]
    prow = [row(f'<tr data-part="{esc(part)}"><td><span class="ul {PART_CLASS.get(part, "po")}"></span>'
                f"{esc(part)}</td>", v) for part, v in part_stats(infos).items()]
    extra = loss_share_html(rendered)
    cut = rendered.n_before_truncation - rendered.n_tokens
    if cut > 0:
        extra += f'<div class="note">truncated: {cut} of {rendered.n_before_truncation} tokens cut</div>'
    return (
        '<div class="stats">'
        f'<div class="kpis"><div class="kpi"><b>{s["tokens"]}</b><span>tokens</span></div>'
        f'<div class="kpi"><b>{s["trained"]}</b><span>trained</span></div>'
        + (f'<div class="kpi"><b>{s["weighted"]}</b><span>weighted</span></div>' if weighted else "")
        + f'<div class="kpi"><b>{pct(s["share"])}</b><span>share</span></div></div>{extra}'
        f'<table class="grid"><thead><tr><th>role</th><th>tokens</th><th>trained</th>{wcol}<th>share</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
        f'<table class="grid parts"><thead><tr><th>part</th><th>tokens</th><th>trained</th>{wcol}<th>share</th></tr>'
        f'</thead><tbody>{"".join(prow)}</tbody></table></div>')


# ------------------------------------------------------------------------------------------------------ findings
def location_text(location: dict, items: int = 3, chars: int = 48) -> str:
    """A finding's location in one short line: long lists and strings shortened (the message names the details).
    Example: location_text({"paths": ["a.x", "a.y", "b", "c", "d"]}) -> "paths a.x, a.y, b … (+2)"."""
    out = []
    for k, v in location.items():
        if isinstance(v, (list, tuple)):
            shown = ", ".join(str(x) for x in v[:items]) + (f" … (+{len(v) - items})" if len(v) > items else "")
        else:
            shown = str(v)
        out.append(f"{k} {shown if len(shown) <= chars else shown[:chars - 1] + '…'}")
    return ", ".join(out)


# Fixes as the app says them: its own controls, not the CLI's flags or the config's field names (core.findings
# words them for every front end).
APP_FIXES = {
    "template_ambiguous": "Tick 'Templates are token ids' under Options and give the in-context ids from the message, "
                          "or use assistant_only.",
    "trl_cannot_patch": "Click 'Use a proven {% generation %}-marked copy' above the tokens (Templates → "
                        "Generate shows and downloads it), pick a chat template TRL knows under Chat template, or "
                        "export these labels pre-tokenized (Export tab): TRL trains on a labels column as it is.",
    "template_swapped": "Nothing to fix if intended; to train on what inference shows, tick Split turns under Options "
                        "(each turn with its history as at inference) or set Template source to MaskLens's own "
                        "masking.",
    "empty_think_trained": "Set Empty think to mask under Options to keep it rendered but untrained, or give those "
                           "turns reasoning.",
    "images_not_processed": "Load the vision-language model's tokenizer in the Tokenizer box (a hub id or a folder "
                            "with its processor files, preprocessor_config.json): the rows then go through TRL's "
                            "vision collator, image tokens and all.",
    "content_parts_printed": "Set Content parts to join under Options (the parts joined into one string), store "
                             "content as strings, or pick a template that reads parts under Chat template.",
    "reasoning_not_rendered": "Pick a chat template that renders reasoning for every turn under Chat template (e.g. "
                              "TRL qwen3.jinja: TRL's training twin keeps it), tick Split turns under Options, or "
                              "drop the reasoning from history turns on purpose.",
}
# CLI wording in the engine's error messages -> the app's controls (error_html rewrites them).
APP_WORDING = (
    ("pass --chat-template FILE (a jinja template)", "pick one under Chat template (or paste one in the Chat template "
                                                     "box and Apply)"),
    ('pass --response-template "### Assistant:" or --response-template-ids 1,2,3',
     "type it in the Response template box under Options (e.g. ### Assistant:), or its ids with 'Templates are token "
     "ids' ticked"),
    ("choose --strategy assistant_only, or drop --split-turns", "choose the assistant_only strategy, or untick "
                                                                "Split turns"),
    ("give a path to a .jsonl/.json/.parquet/.csv file", "upload a .jsonl, .json, .parquet or .csv file (or a .zip of "
     "a dataset folder), or, when starting the app, give"),
)
# Findings whose message quotes another tool's error: the explanation leads, the quote is folded.
FOLDED = {"trl_cannot_patch": "TRL's own message"}


def app_wording(text: str) -> str:
    """An engine message with its CLI wording replaced by the app's controls (APP_WORDING)."""
    for cli, app in APP_WORDING:
        text = text.replace(cli, app)
    return text


def app_fix(f: Finding) -> str:
    return APP_FIXES.get(f.code) or app_wording(f.fix)


def by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then notes (stable within each)."""
    return sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 3))


def findings_html(findings: list[Finding]) -> str:
    if not findings:
        return '<div class="findings"><div class="ok">No findings: nothing suspicious in this example.</div></div>'
    items = []
    for f in by_severity(findings):
        loc = ""
        if f.location:
            loc = '<span class="loc">' + esc(location_text(f.location)) + "</span>"
        pos = f.location.get("token") if isinstance(f.location.get("token"), int) else \
            next(iter(f.location.get("tokens") or []), None)
        goto = f' data-token="{pos}" title="show token {pos}"' if isinstance(pos, int) else ""
        items.append(
            f'<div class="finding sev-{esc(f.severity)}" data-code="{esc(f.code)}"{goto}>'
            f'<div class="fh"><span class="badge">{esc(f.severity)}</span><code>{esc(f.code)}</code>{loc}</div>'
            + (f'<div class="fm">{esc(f.explanation)}</div><details class="fx"><summary>{esc(FOLDED[f.code])}'
               f"</summary>{esc(f.message)}</details>" if f.code in FOLDED else
               f'<div class="fm">{esc(f.message)}</div><div class="fx">{esc(f.explanation)}</div>')
            + f'<div class="ff"><b>Fix:</b> {esc(app_fix(f))}</div></div>')
    return '<div class="findings">' + "".join(items) + "</div>"


def severity_of(code: str) -> str:
    return CODES[code][0] if code in CODES else "info"


def codes_by_severity(codes: Iterable[str]) -> list[str]:
    """Finding codes, errors first (stable within a severity). Example: ["pad_is_eos", "no_trained_tokens"] ->
    ["no_trained_tokens", "pad_is_eos"]."""
    return sorted(codes, key=lambda c: SEVERITY_ORDER.get(severity_of(c), 3))


def finding_counts_html(counts: Counter | dict) -> str:
    if not counts:
        return '<div class="ok">No findings in the dataset.</div>'
    rows = "".join(
        f'<tr><td><span class="badge sev-{esc(severity_of(c))}">{esc(severity_of(c))}</span></td>'
        f'<td><code>{esc(c)}</code></td><td>{n}</td><td>{esc(CODES[c][1]) if c in CODES else ""}</td></tr>'
        for c, n in sorted(counts.items(), key=lambda kv: (SEVERITY_ORDER.get(severity_of(kv[0]), 3), -kv[1], kv[0])))
    return ('<table class="grid findings-table"><thead><tr><th></th><th>code</th><th>examples</th><th>meaning</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


# ------------------------------------------------------------------------------------------------------ boxes
def error_html(message: str, title: str = "Error", kept: str = "") -> str:
    """The in-page error box (the message of a MaskLensError names file, row, field and fix); `kept`: what the page
    still shows instead (e.g. "Nothing changed: still showing sample.jsonl.")."""
    msg = esc(app_wording(message))
    if " Fix: " in msg:
        what, fix = msg.split(" Fix: ", 1)
        msg = f'{what}<div class="ff"><b>Fix:</b> {fix}</div>'
    tail = f'<div class="errkept">{esc(kept)}</div>' if kept else ""
    return f'<div class="errbox" role="alert"><b>{esc(title)}</b><div>{msg}</div>{tail}</div>'


def images_hint_html(n_images: int) -> str:
    """Under an error on a row with images: what renders such rows (the images_not_processed fix)."""
    return (f'<div class="hint images-hint">This row has {n_images} image{"s" if n_images != 1 else ""}. '
            f"{esc(APP_FIXES['images_not_processed'])}</div>")


def data_info_html(data) -> str:
    """Source line for the current dataset plus the list of rows that could not be read."""
    if data is None:
        return ""
    n_ok, n_bad = len(data.examples), len(data.errors)
    what = f' <span class="what">· {esc(SAMPLES[data.name])}</span>' if data.name in SAMPLES else ""
    head = f'<div class="datainfo"><b>{esc(data.name)}</b>: {n_ok} example{"s" if n_ok != 1 else ""}'
    if n_bad:
        head += f', <span class="bad">{n_bad} row{"s" if n_bad != 1 else ""} could not be read</span>'
    head += what
    head += "</div>"
    if not n_bad:
        return head
    rows = "".join(
        f'<li><span class="where">{f"line {e.line}" if e.line else f"row {e.row}" if e.row is not None else ""}'
        f'</span> {esc(_strip_file(e.message, data.name))}</li>' for e in data.errors[:200])
    more = f"<li>… and {n_bad - 200} more</li>" if n_bad > 200 else ""
    return head + f'<div class="errbox rowerrors" role="alert"><b>Rows skipped</b><ul>{rows}{more}</ul></div>'


def _strip_file(message: str, name: str) -> str:
    """'file x.jsonl, row 3, field 'f': line 4: msg' -> "field 'f': msg" (the list already says file and line)."""
    import re  # noqa: PLC0415

    m = re.sub(rf"^file {re.escape(name)}(, row \d+)?(, |: )?", "", message)
    m = re.sub(r"(^|: )line \d+: ", r"\1", m)
    return re.sub(r"^line \d+ ", "", m)


def example_caption(ex, index: int, total: int, turn: int | None = None, turns: list | None = None) -> str:
    """The line beside the navigation; with split_turns also which of the row's examples is shown."""
    where = f"row {ex.row}" + (f", line {ex.line}" if ex.line else "")
    split = ""
    if turn is not None and turns:
        split = (f" · <b>turn {turn}</b> ({turns.index(turn) + 1} of {len(turns)} examples split from this row)"
                 if turn in turns else f" · turn {turn}")
    return (f'<div class="caption">example <b>{index + 1}</b> of {total} · {esc(where)}{split} · '
            f"<code>{esc(ex.kind)}</code></div>")


def raw_json(ex) -> str:
    return json.dumps(ex.raw, ensure_ascii=False, indent=2)


# ------------------------------------------------------------------------------------------------------ compare
def loss_weights(r: RenderedExample) -> list[float]:
    """Each token's loss weight: RenderedExample.weights, else 1 where labelled and 0 where -100.
    Example: labels [-100, 5, 6] -> [0.0, 1.0, 1.0]."""
    return r.weights if r.weights is not None else [0.0 if lab == IGNORE else 1.0 for lab in r.labels]


def diff_positions(seqs: list[list]) -> set[int]:
    """Positions where not all sequences agree (same token sequence assumed). Example: [[0, 1], [0, 0.1]] -> {1}."""
    return {i for i, xs in enumerate(zip(*seqs)) if any(x != xs[0] for x in xs[1:])}


def compare_summary_html(names: list[str], rendered: list[RenderedExample], same_ids: bool, n_diff: int,
                         per_config_diff: list[int]) -> str:
    """The Compare summary: how many tokens are labelled (or weighted) differently, then one row per configuration."""
    weighted = any(r.n_weighted for r in rendered)
    rows = []
    for i, (name, r) in enumerate(zip(names, rendered)):
        share = r.n_trained / r.n_tokens if r.n_tokens else 0
        d = "—" if not same_ids else "reference" if i == 0 else f"{per_config_diff[i]}"
        codes = ", ".join(dict.fromkeys(f.code for f in by_severity(r.findings))) or "—"
        w = f"<td>{r.n_weighted} (Σw {r.weight_sum:.4g})</td>" if weighted else ""
        rows.append(f"<tr><td><b>{chr(65 + i)}</b></td><td>{esc(name)}</td><td>{r.n_tokens}</td><td>{r.n_trained}</td>"
                    f"{w}<td>{pct(share)}</td><td>{d}</td><td>{esc(codes)}</td></tr>")
    if same_ids:
        how = "labelled or weighted" if weighted else "labelled"
        head = (f'<div class="cmp-head"><b class="ndiff" data-diff="{n_diff}">{n_diff}</b> token'
                f'{"s" if n_diff != 1 else ""} {how} differently across the configurations '
                f"(black top edge in the views below)</div>")
    else:
        labels = sorted({r.template_label for r in rendered if r.template_label})
        why = ("they render with different templates: " + "; ".join(labels)) if len(labels) > 1 else \
            "different chat templates, or options that change the rendering"
        head = ('<div class="cmp-head warn">The configurations tokenize the example differently (' + esc(why)
                + "), so labels are not compared position by position; compare counts per role instead.</div>")
    return (head + '<div class="scroll-x"><table class="grid"><thead><tr><th></th><th>configuration</th><th>tokens</th>'
            + "<th>trained</th>" + ("<th>weighted</th>" if weighted else "") + "<th>share</th><th>labels differing vs A"
            + (" (or weights)" if weighted else "") + "</th><th>findings</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div>")


# ------------------------------------------------------------------------------------------------------ templates
def checks_html(checks) -> str:
    """core.masking.checks.Check list as a pass/fail table."""
    rows = []
    for c in checks:
        mark, cls = ("✔", "pass") if c.passed else ("–", "na") if c.passed is None else ("✘", "fail")
        rows.append(f'<tr class="chk-{cls}"><td class="mark">{mark}</td><td><b>{esc(c.name)}</b></td>'
                    f'<td>{esc(c.detail)}<div class="fx">{esc(c.explanation)}</div></td></tr>')
    return ('<table class="grid checks"><thead><tr><th></th><th>check</th><th>result · why it matters</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def spans_html(text: str, spans, title: str = "") -> str:
    """A rendered conversation with each message's header, content and end-of-turn marker tinted by role."""
    cuts = []
    for sp in spans:
        if not sp.found:
            continue
        cls = ROLE_CLASS.get(sp.role, "ro")
        cuts += [(sp.header_start, sp.content_start, f"sh {cls}", f"message {sp.index} ({sp.role}): header"),
                 (sp.content_start, sp.content_end, f"sc {cls}", f"message {sp.index} ({sp.role}): content")]
        if sp.eot_start >= 0:
            cuts.append((sp.eot_start, sp.eot_end, f"se {cls}", f"message {sp.index} ({sp.role}): end-of-turn"))
        if sp.eos_start >= 0:
            cuts.append((sp.eos_start, sp.eos_end, f"se {cls}", f"message {sp.index} ({sp.role}): EOS"))
    cuts = sorted((c for c in cuts if c[1] > c[0]), key=lambda c: c[0])
    out, pos = [], 0

    def piece(s: str) -> str:
        return html.escape(s, quote=False).replace("\n", "<s>↵</s>\n")

    for a, b, cls, tip in cuts:
        if a < pos:
            a = pos
        if b <= a:
            continue
        if a > pos:
            out.append(f'<span class="st" title="template text">{piece(text[pos:a])}</span>')
        out.append(f'<span class="{cls}" title="{esc(tip)}">{piece(text[a:b])}</span>')
        pos = b
    if pos < len(text):
        out.append(f'<span class="st" title="template text">{piece(text[pos:])}</span>')
    head = f'<div class="spans-title">{esc(title)}</div>' if title else ""
    return head + '<div class="spans">' + "".join(out) + "</div>"


def derived_html(derived) -> str:
    rows = []
    for d in derived:
        same = d.ids_in_context == d.ids_alone
        rows.append(f"<tr><td><b>{esc(d.name)}</b></td><td><code>{esc(repr(d.text)) if d.text else '—'}</code></td>"
                    f"<td><code>{esc(d.ids_alone)}</code></td>"
                    f'<td class="{"" if same else "bad"}"><code>{esc(d.ids_in_context)}</code></td>'
                    f"<td>{esc(d.note)}</td></tr>")
    return ('<table class="grid"><thead><tr><th>template</th><th>text</th><th>ids alone</th><th>ids in context</th>'
            f'<th>note</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def usage_html(usage: dict, n_texts: int) -> str:
    """core.masking.checks.template_usage's answer for a dataset of n_texts rendered examples."""
    t = usage["template"]
    n_text = len(usage["texts_containing"])
    n_ids = len(usage["texts_with_alone_ids"])
    cls = "ok" if n_ids == n_texts and not usage["ambiguous"] else "errbox"
    lines = [f"<b>{esc(repr(t))}</b> is <code>{esc(usage['alone_ids'])}</code> alone "
             f"(<code>{esc(' '.join(usage['alone_tokens']))}</code>).",
             f"Found as text in <b>{n_text}</b> of {n_texts} examples; its alone ids are found in <b>{n_ids}</b>."]
    if n_text > n_ids:
        lines.append(f"In {n_text - n_ids} example(s) the text is there but its ids are not: the old collator "
                     "masks those examples entirely.")
    variants = "".join(
        f"<tr><td><code>{esc(v['ids'])}</code></td><td>{v['count']}</td>"
        f"<td>{'same as alone' if v['same_as_alone'] else '<b>differs from alone</b>'}</td></tr>"
        for v in usage["in_context_variants"])
    table = ('<table class="grid"><thead><tr><th>ids in context</th><th>occurrences</th><th></th></tr></thead>'
             f"<tbody>{variants}</tbody></table>") if variants else ""
    return f'<div class="{cls}">' + "<br>".join(lines) + "</div>" + table


def proof_html(proof) -> str:
    def yn(ok: bool) -> str:
        return '<span class="yes">✔ yes</span>' if ok else '<span class="no">✘ no</span>'

    diffs = "".join(f"<li>{esc(d)}</li>" for d in proof.differences[:20])
    return (f'<div class="{"ok" if proof.ok else "errbox"}"><b>{"Proven" if proof.ok else "Not proven"}</b> on '
            f"{proof.n_conversations} conversation(s) (the dataset's plus probes):<br>"
            f"rendering byte-identical to the original: {yn(proof.byte_identical)}<br>"
            f"{{% generation %}} mask (TRL assistant_only_loss) == MaskLens assistant_only on the original: "
            f"{yn(proof.masks_equal)}" + (f"<ul>{diffs}</ul>" if diffs else "") + "</div>")


# ------------------------------------------------------------------------------------------------------ image runs
class ImageRun:
    """A run of one repeated image token (e.g. ``<|image_pad|>`` ×256) with one label state, shown collapsed."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[TokenInfo]):
        self.tokens = tokens

    @property
    def count(self) -> int:
        return len(self.tokens)

    @property
    def trained(self) -> bool:
        return self.tokens[0].label != IGNORE

    @property
    def summary(self) -> str:
        """Example: "<|image_pad|> ×256"."""
        return f"{self.tokens[0].text} ×{self.count}"


def collapse_image_runs(infos: list[TokenInfo], image_ids: Iterable[int], min_run: int = 2) -> list:
    """The token list with each run of at least ``min_run`` identical image tokens that share a label state replaced
    by one ImageRun (a run whose labels change part-way is split there, so a collapsed run never hides a label
    difference). Other tokens come back as they are. Example: [a, pad, pad, pad, b] -> [a, ImageRun(pad ×3), b]."""
    ids = set(image_ids)
    out: list = []
    i, n = 0, len(infos)
    while i < n:
        t = infos[i]
        j = i + 1
        if t.id in ids:
            trained = t.label != IGNORE
            while j < n and infos[j].id == t.id and (infos[j].label != IGNORE) == trained:
                j += 1
        if j - i >= min_run:
            out.append(ImageRun(infos[i:j]))
        else:
            out.extend(infos[i:j])
        i = j
    return out


def image_run_html(run: ImageRun, inner: str = "") -> str:
    """One collapsed run: a ``<details>`` whose summary shows "<|image_pad|> ×256" with the run's label state (the
    same ``data-label`` the token spans carry) and whose body holds the tokens' own spans (``inner``), expanded on
    click. Example: image_run_html(run, "<span ...>...</span>" * 256)."""
    first = run.tokens[0]
    state = "trained" if run.trained else "not trained"
    title = f"{run.count} image tokens, {state}: {first.rule}" if first.rule else f"{run.count} image tokens, {state}"
    return (f'<details class="imgrun{" tr" if run.trained else ""}" data-label="{first.label}" data-n="{run.count}" '
            f'data-pos="{first.position}"><summary class="x" title="{esc(title)}">{esc(run.summary)}</summary>'
            f"{inner}</details>")
