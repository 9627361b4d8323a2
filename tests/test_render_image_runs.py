"""app.render.collapse_image_runs / image_run_html: a run of image placeholder tokens shown as one expandable
element ("<|image_pad|> ×256") with its label state; a run whose labels change is split, never hiding a difference."""

from __future__ import annotations

from app.render import ImageRun, collapse_image_runs, image_run_html
from core.masking.rendered import TokenInfo

PAD = 7


def tok(i, tid, label, text=None):
    return TokenInfo(i, tid, text or ("<|image_pad|>" if tid == PAD else f"t{tid}"), label, 0, "user", "image", "rule x",
                     True)


def test_runs_collapse_by_id_and_label_state():
    infos = [tok(0, 1, -100)] + [tok(i, PAD, -100) for i in range(1, 257)] + [tok(257, 2, 2)]
    out = collapse_image_runs(infos, {PAD})
    assert [type(x).__name__ for x in out] == ["TokenInfo", "ImageRun", "TokenInfo"]
    assert out[1].count == 256 and out[1].summary == "<|image_pad|> ×256" and not out[1].trained
    mixed = [tok(0, PAD, -100), tok(1, PAD, -100), tok(2, PAD, PAD), tok(3, PAD, PAD), tok(4, PAD, PAD)]
    runs = collapse_image_runs(mixed, [PAD])
    assert [(r.count, r.trained) for r in runs] == [(2, False), (3, True)]
    assert collapse_image_runs([tok(0, PAD, -100), tok(1, 1, -100)], [PAD]) == [tok(0, PAD, -100), tok(1, 1, -100)]
    assert collapse_image_runs([tok(0, 3, -100), tok(1, 3, -100)], [PAD]) == [tok(0, 3, -100), tok(1, 3, -100)]


def test_run_html():
    run = ImageRun([tok(i, PAD, PAD) for i in range(4, 8)])
    h = image_run_html(run, "<span>inner</span>")
    assert h.startswith('<details class="imgrun tr" data-label="7" data-n="4" data-pos="4">')
    assert "&lt;|image_pad|&gt; ×4</summary><span>inner</span></details>" in h and "4 image tokens, trained" in h
