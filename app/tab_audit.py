"""Audit: the whole dataset under the Inspect tab's configuration (core.audit), and a packing preview (core.packing).

Plots are matplotlib figures (Agg, no display); the problem table's rows open in Inspect.
"""

from __future__ import annotations

import logging
from collections import Counter

import gradio as gr

from core.audit import audit
from core.masking.engine import IGNORE, TokenInfo, render_examples
from core.errors import MaskLensError
from core.packing import PACKING_STRATEGIES, pack_preview, packing_summary

from . import render
from .session import Session

log = logging.getLogger(__name__)

PROBLEM_COLUMNS = ["#", "row", "severity", "findings", "tokens", "trained share"]
PER_EXAMPLE_BARS = 400  # above this many examples the plots are histograms
MAX_PROBLEM_ROWS = 2000  # the table lists the first ones; the counts above it cover all
# Event kwargs for work over a whole dataset (audit, packing, export, starting a run, generations): these events share
# one queue and run one at a time across all sessions, so they wait their turn instead of taking the cores from
# everyone's token views (views keep the default concurrency, app.main's queue()).
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy"}


def _fail(e: Exception) -> str:
    if not isinstance(e, MaskLensError):
        log.exception("audit tab")
        return render.error_html(f"{type(e).__name__}: {e}", "Unexpected error")
    return render.error_html(str(e))


# ------------------------------------------------------------------------------------------------------ plots
def _figure(height: float = 2.5):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, height), dpi=100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.2, top=0.88)
    return fig, ax


def share_plot(shares: list[float]):
    """Trained share per example (bars, red where nothing is trained), or its histogram for big datasets."""
    fig, ax = _figure()
    if len(shares) <= PER_EXAMPLE_BARS:
        xs = range(1, len(shares) + 1)
        ax.bar(xs, [100 * s for s in shares], color="#10b981", width=0.85)
        zeros = [x for x, s in zip(xs, shares) if s == 0]
        if zeros:  # nothing trained: a bar of height 0 would be invisible
            ax.scatter(zeros, [2] * len(zeros), marker="x", color="#dc2626", s=18, label="nothing trained", zorder=3)
            ax.legend(fontsize=7, frameon=False, loc="upper right")
        ax.set_ylim(0, 105)
        ax.set_xlabel("example #", fontsize=8)
    else:
        ax.hist([100 * s for s in shares], bins=40, color="#10b981")
        ax.set_xlabel("trained share (%)", fontsize=8)
    ax.set_ylabel("% trained" if len(shares) <= PER_EXAMPLE_BARS else "examples", fontsize=8)
    ax.set_title("Trained share per example", fontsize=9, loc="left")
    return fig


def length_plot(lengths: list[int], max_length: int | None):
    """Tokens per example before truncation, with the max_length line."""
    fig, ax = _figure()
    if len(lengths) <= PER_EXAMPLE_BARS:
        colors = ["#f59e0b" if max_length and n > max_length else "#64748b" for n in lengths]
        ax.bar(range(1, len(lengths) + 1), lengths, color=colors, width=0.85)
        ax.set_xlabel("example #", fontsize=8)
        ax.set_ylabel("tokens", fontsize=8)
        if max_length:
            ax.axhline(max_length, color="#dc2626", linestyle="--", linewidth=1)
            ax.annotate(f"max_length {max_length}", (0.99, max_length), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8, color="#dc2626")
    else:
        ax.hist(lengths, bins=40, color="#64748b")
        ax.set_xlabel("tokens", fontsize=8)
        ax.set_ylabel("examples", fontsize=8)
        if max_length:
            ax.axvline(max_length, color="#dc2626", linestyle="--", linewidth=1)
    ax.set_title("Length per example (before truncation)", fontsize=9, loc="left")
    return fig


# ------------------------------------------------------------------------------------------------------ audit
def kpis_html(rep) -> str:
    share = rep.trained_tokens / rep.tokens if rep.tokens else 0
    k = [(rep.examples, "examples"), (rep.tokens, "tokens"), (rep.trained_tokens, "trained tokens"),
         (render.pct(share), "trained share"), (rep.examples_without_trained_tokens, "with nothing trained"),
         (rep.examples_truncated, "truncated"), (len(rep.problems), "with problems")]
    return '<div class="stats"><div class="kpis">' + "".join(
        f'<div class="kpi"><b>{v}</b><span>{render.esc(n)}</span></div>' for v, n in k) + "</div></div>"


def problems_table(session: Session, rep) -> list[list]:
    """One row per problem example: its # in Inspect (1-based), file row, severity, codes, tokens, trained share."""
    position = {ex.row: k for k, ex in enumerate(session.data.examples)}
    out = []
    for p in rep.problems[:MAX_PROBLEM_ROWS]:
        k = position.get(p["row"])
        if k is None:
            continue
        out.append([k + 1, p["row"], p["severity"], ", ".join(render.codes_by_severity(p["codes"])),
                    rep.lengths[k], render.pct(rep.trained_share[k])])
    return out


def on_audit(session: Session, progress=gr.Progress()):
    """Audit the whole dataset. Returns (summary HTML, share plot, length plot, finding counts HTML, problem rows)."""
    empty = (None, None, "", [])
    if session.data is None or not session.data.examples:
        return (render.error_html("No examples to audit: choose data in the Inspect tab.", "Nothing to audit"), *empty)
    try:
        tok = session.tokenizer()
        cfg = session.config()
        session.check_rows()  # an edited template renders every row in the sandbox first (bounded)
        total = len(session.data.examples)
        progress(0, desc=f"rendering {total} examples")

        def cb(done: int, n: int):
            progress(done / n, desc=f"{done}/{n} examples")

        rep, _ = audit(session.data.examples, tok, cfg, progress=cb, errors="finding", image_root=session.data.root)
    except Exception as e:  # noqa: BLE001 - shown in the page
        return (_fail(e), *empty)
    from core.export import describe  # noqa: PLC0415

    head = (f'<div class="caption">{render.esc(session.data.name)} · {render.esc(describe(cfg))}'
            + (f" · {len(session.data.errors)} unreadable rows not audited" if session.data.errors else "")
            + "</div>")
    fig_share, fig_len = share_plot(rep.trained_share), length_plot(rep.lengths, cfg.max_length)
    return (head + kpis_html(rep), fig_share, fig_len, render.finding_counts_html(Counter(rep.findings)),
            problems_table(session, rep))


def open_problem(session: Session, number) -> tuple:
    """Open example #number (1-based, as the problem table shows it) in Inspect; returns Inspect's outputs."""
    from .tab_inspect import open_row  # noqa: PLC0415

    return open_row(session, int(number) - 1)


def on_select_problem(session: Session, evt: gr.SelectData):
    """A click in the problem table: open that row's example in Inspect and switch to the Inspect tab."""
    from .inspect_view import view  # noqa: PLC0415

    row = evt.row_value or []
    if not row:
        return (*view(session), gr.Tabs())
    return (*open_problem(session, row[0]), gr.Tabs(selected="inspect"))


# ------------------------------------------------------------------------------------------------------ packing
def packed_row_infos(row, tok) -> tuple[list[TokenInfo], dict[int, str]]:
    """TokenInfos for one packed row (labels as the model sees them) and the document boundary markers."""
    texts = tok.batch_decode([[i] for i in row.input_ids])
    special = set(getattr(tok, "all_special_ids", []) or [])
    infos, breaks = [], {}
    for d, (a, b, src) in enumerate(row.documents):
        sl = row.slices[d]
        cut = f", tokens {sl.start}-{sl.end} of {sl.length}" if (sl.start, sl.end) != (0, sl.length) else ""
        breaks[a] = f"doc {d} · #{src + 1}{cut}"
        for i in range(a, b):
            lab, seen = row.labels[i], row.labels_seen[i]
            if seen != IGNORE:
                rule = "trained (kept by packing and the collator)"
            elif lab != IGNORE:
                rule = "not trained: the padding-free collator masks each document's first token"
            else:
                rule = "not trained: ignored in the source example"
            infos.append(TokenInfo(i, row.input_ids[i], texts[i], seen, src, None, f"document {d}", rule,
                                   row.input_ids[i] in special))
    return infos, breaks


def packing_html(summary: dict, rows, limit: int = 80) -> str:
    s = summary
    k = [(s["rows"], "rows"), (f'{100 * s["fill_ratio"]:.1f}%', "fill"),
         (f'{s["documents_per_row"]:.2f}', "docs / row"),
         (s["examples_split"], "examples split"), (s["examples_truncated"], "truncated"),
         (s["trained_tokens_seen"], "trained tokens seen"),
         (s["trained_tokens_lost_to_truncation"] + s["trained_tokens_masked_by_collator"], "trained tokens lost")]
    kp = '<div class="stats"><div class="kpis">' + "".join(
        f'<div class="kpi"><b>{v}</b><span>{render.esc(n)}</span></div>' for v, n in k) + "</div></div>"
    note = (f'<div class="caption">padding-free: {s["padding_free"]} · trained before packing '
            f'{s["trained_tokens_before"]} → packed {s["trained_tokens_packed"]} → seen {s["trained_tokens_seen"]} '
            f'(truncation lost {s["trained_tokens_lost_to_truncation"]}, collator masked '
            f'{s["trained_tokens_masked_by_collator"]}; cross-document targets {s["cross_document_targets"]}) · '
            f'padding avoided {s["padding_tokens_avoided"]} tokens</div>')
    bars = []
    for r, row in enumerate(rows[:limit]):
        L = row.max_length
        docs = []
        for d, ((a, b, src), sl) in enumerate(zip(row.documents, row.slices)):
            kept = sum(1 for x in row.labels_seen[a:b] if x != IGNORE)
            w = 100 * (b - a) / L
            tip = (f"doc {d}: example #{src + 1}, {b - a} tokens ({sl.start}-{sl.end} of {sl.length}), "
                   f"{kept} trained seen")
            cls = "doc" + (" cut" if (sl.start, sl.end) != (0, sl.length) else "")
            docs.append(f'<div class="{cls}" style="width:{w:.3f}%" title="{render.esc(tip)}" data-source="{src}">'
                        f'<div class="kept" style="width:{100 * kept / max(1, b - a):.1f}%"></div>'
                        f"<span>#{src + 1}</span></div>")
        bars.append(f'<div class="prow" data-row="{r}"><div class="pl">row {r}</div><div class="pbar">{"".join(docs)}'
                    f'</div><div class="pn">{len(row.input_ids)}/{L}</div></div>')
    more = f'<div class="caption">… {len(rows) - limit} more rows</div>' if len(rows) > limit else ""
    legend = ('<div class="legend"><span class="lg"><span class="sw doc-sw"></span>document (source example #)</span>'
              '<span class="lg"><span class="sw kept-sw"></span>share of its tokens trained as seen</span>'
              '<span class="lg"><span class="sw cut-sw"></span>split or truncated</span></div>')
    return kp + note + legend + '<div class="packing">' + "".join(bars) + more + "</div>"


def on_pack(session: Session, strategy: str, max_length, show_row):
    """Packing preview. Returns (rows HTML, token view of one row)."""
    if session.data is None or not session.data.examples:
        return render.error_html("No examples to pack: choose data in the Inspect tab.", "Nothing to pack"), ""
    try:
        max_length = int(max_length or 0)
        tok = session.tokenizer()
        session.check_rows()  # an edited template renders every row in the sandbox first (bounded)
        # TRL does not truncate before packing (bfd truncates documents itself): render without max_length.
        rendered = [r for r in render_examples(session.data.examples, tok, session.config(max_length=0),
                                               errors="finding", image_root=session.data.root) if r.n_tokens]
        rows = pack_preview(rendered, max_length, strategy)
        summary = packing_summary(rows, len(rendered))
    except Exception as e:  # noqa: BLE001
        return _fail(e), ""
    if not rows:
        return render.error_html("Packing produced no rows (every example is empty).", "Nothing packed"), ""
    k = max(0, min(int(show_row or 0), len(rows) - 1))
    infos, breaks = packed_row_infos(rows[k], tok)
    view = (f'<div class="caption">row {k}: labels as the model sees them; ‖ marks a document boundary</div>'
            + render.token_view_html(infos, elem_id="packed-row-view", breaks=breaks))
    return packing_html(summary, rows), view


def build_audit_tab(session: gr.State) -> dict:
    """The Audit tab (call inside a gr.Tab). Returns the problem table (main.py wires its select to Inspect)."""
    with gr.Row(elem_classes="bar"):
        run = gr.Button("Audit the dataset", variant="primary", size="md", scale=0, min_width=170, elem_id="audit-run")
        gr.HTML('<div class="hint">Every example under the Inspect tab\'s tokenizer, template and strategy. '
                "Click a problem row to open it in Inspect.</div>")
    summary = gr.HTML(elem_id="audit-summary")
    with gr.Row(equal_height=False):
        share = gr.Plot(show_label=False, elem_id="audit-share")
        length = gr.Plot(show_label=False, elem_id="audit-length")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            gr.Markdown("#### Findings")
            counts = gr.HTML(elem_id="audit-counts")
        with gr.Column(scale=3):
            gr.Markdown("#### Problem examples")
            problems = gr.Dataframe(headers=PROBLEM_COLUMNS, value=[], interactive=False, elem_id="audit-problems",
                                    wrap=True, max_height=360)
    gr.Markdown("#### Packing preview (TRL 1.16 `packing=True`)")
    gr.HTML('<div class="hint">Rows built by TRL\'s own pack_dataset from the examples rendered without max_length '
            "(TRL does not truncate before packing). bfd and bfd_split are padding-free: the collator masks each "
            "document's first token; wrapped lets documents attend across boundaries.</div>")
    with gr.Row(elem_classes="bar"):
        # one column each: gradio would put adjacent form controls in one shared box that wraps them
        with gr.Column(scale=0, min_width=170):
            pstrat = gr.Dropdown(choices=list(PACKING_STRATEGIES), value="bfd", label="packing_strategy",
                                 elem_id="packing-strategy")
        with gr.Column(scale=0, min_width=120):
            plen = gr.Number(value=512, precision=0, minimum=16, label="max_length")
        with gr.Column(scale=0, min_width=110):
            prow = gr.Number(value=0, precision=0, minimum=0, label="show row")
        pbtn = gr.Button("Preview packing", size="md", scale=0, min_width=150, elem_id="packing-run")
    packing = gr.HTML(elem_id="packing")
    packed_view = gr.HTML(elem_id="packed-row", js_on_load=render.TOKEN_VIEW_JS, elem_classes="tvbox")

    run.click(on_audit, [session], [summary, share, length, counts, problems], **HEAVY)
    pargs = dict(fn=on_pack, inputs=[session, pstrat, plen, prow], outputs=[packing, packed_view], **HEAVY)
    pbtn.click(**pargs)
    pstrat.input(**pargs)
    plen.submit(**pargs)
    prow.submit(**pargs)
    return {"problems": problems, "run": run}
