"""The app's option controls are generated from MaskConfig's options (core.masking.options): every option has its
control in Inspect and in each Compare configuration, labelled and explained from its metadata, and the settings map
onto MaskConfig with no option written out again; loss weights and image runs in the token view, stats and Compare.
Callbacks called directly (tests/test_browser_options.py drives the same in a real browser)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from app import tab_compare, tab_inspect
from app.session import SETTING_FIELDS, Session, Settings, load_sample, setting_options
from core.masking.engine import IGNORE, MaskConfig, render_examples
from core.masking.options import options
from core.errors import MaskLensError

TOKEN_RE = re.compile(r'<span class="([^"]*)" data-token-id="(-?\d+)" data-label="(-?\d+)" data-k="(\d+)">')


def info_table(view: str) -> list[list]:
    return json.loads(re.search(r'data-info="([^"]*)"', view).group(1).replace("&quot;", '"'))


def with_settings(s: Session, **changes) -> tab_inspect.InspectOut:
    """on_settings as the page sends it: every control's value, some changed."""
    values = replace(s.settings, **changes)
    return tab_inspect.on_settings(s, *[getattr(values, n) for n in SETTING_FIELDS])


@pytest.fixture(scope="module")
def app_blocks():
    from app.main import build_app

    return {b.elem_id: b for b in build_app().blocks.values() if getattr(b, "elem_id", None)}


# ------------------------------------------------------------------------------------------------------ generated
def test_every_option_has_its_control_in_inspect_and_in_each_compare_configuration(app_blocks):
    names = [o.name for o in setting_options()]
    assert names == [o.name for o in options() if o.kind != "template_file"]
    assert SETTING_FIELDS == [*names, "templates_as_ids"]
    assert list(tab_compare.Cfg._fields) == [n for n in names if n not in tab_compare.FROM_INSPECT] + [
        "chat_template", "templates_as_ids"]
    for o in setting_options():
        box = app_blocks[o.name.replace("_", "-")]
        assert box.label == o.label and box.info.startswith(o.help), o.name
        for col in "abcd":
            if o.name not in tab_compare.FROM_INSPECT:
                assert app_blocks[f"cmp-{o.name.replace('_', '-')}-{col}"].label in (o.label, f"{col.upper()} · strategy")
    # the new options among them, with the control their kind asks for
    assert app_blocks["prompt-loss-weight"].step == 0.01 and app_blocks["content-parts"].choices == [("keep", "keep"),
                                                                                                     ("join", "join")]


def test_settings_map_onto_maskconfig():
    assert Settings().to_config() == MaskConfig(response_template="<|im_start|>assistant\n")  # TRL's defaults
    cfg = Settings(strategy="full", max_length=0, mask_tokens=r"</think>, \n", pad_token=" <pad> ", train_roles=[],
                   prompt_loss_weight=0.25, content_parts="join", response_template="", instruction_template="1, 2",
                   templates_as_ids=True).to_config("TEMPLATE")
    assert cfg == MaskConfig("full", max_length=None, mask_tokens=("</think>", "\n"), pad_token="<pad>",
                             prompt_loss_weight=0.25, content_parts="join", instruction_template=[1, 2],
                             chat_template="TEMPLATE")
    with pytest.raises(MaskLensError, match="prompt_loss_weight"):
        Settings(prompt_loss_weight=2).to_config()


def test_prompt_loss_weight_shades_weighted_tokens_names_their_weight_and_counts_them(smol_tok):
    s = Session(data=load_sample("chat_multiturn.jsonl"))
    out = with_settings(s, prompt_loss_weight=0.1)
    want = render_examples([s.example], smol_tok, MaskConfig("assistant_only", prompt_loss_weight=0.1))[0]
    toks = TOKEN_RE.findall(out.view)
    assert [int(lab) for _, _, lab, _ in toks] == want.labels and out.error == ""
    table = info_table(out.view)
    for (cls, _, _, k), w in zip(toks, want.weights):  # shaded (w1: weight 0.1), the weight in its tooltip row
        assert ("w w1" in cls) == (w == 0.1), cls
        assert (table[int(k)][4:] == ["0.1"]) == (w == 0.1) and not table[int(k)][3].startswith("not trained")
    assert f"<b>{want.n_weighted}</b><span>weighted</span>" in out.stats
    assert f"<b>{want.n_trained}</b><span>trained</span>" in out.stats and 'data-weighted="' in out.stats
    assert 'data-legend="weighted"' in out.legend
    assert 'data-legend="weighted"' not in with_settings(s, prompt_loss_weight=0.0).legend


def test_content_parts_join_renders_typed_content_the_template_cannot_take(tmp_path, smol_tok):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}]}
    (p := tmp_path / "typed.jsonl").write_text(json.dumps(row) + "\n")
    s = tab_inspect.on_load()[0]
    keep = tab_inspect.InspectOut(*tab_inspect.on_upload(s, str(p))[:len(tab_inspect.InspectOut._fields)])
    assert "failed to render" in keep.error  # SmolLM2's template concatenates content as a string
    joined = with_settings(s, content_parts="join")
    want = render_examples([s.example], smol_tok, MaskConfig("assistant_only", content_parts="join"))[0]
    assert joined.error == "" and "user\nHi there<|im_end|>" in want.text
    assert [(int(i), int(lab)) for _, i, lab, _ in TOKEN_RE.findall(joined.view)] == list(zip(want.input_ids,
                                                                                          want.labels))


def test_compare_counts_tokens_whose_weight_differs(smol_tok):
    s = Session(data=load_sample("chat_multiturn.jsonl"))
    Cfg = tab_compare.Cfg
    values = [*Cfg("assistant_only"), *Cfg("assistant_only", prompt_loss_weight=0.1)]
    summary, *views = tab_compare.on_compare(s, 2, *values, *[""] * (2 * tab_compare.FIELDS))
    a, b = (render_examples([s.example], smol_tok, MaskConfig("assistant_only", prompt_loss_weight=w))[0]
            for w in (0.0, 0.1))
    n = sum(1 for lab in a.labels if lab == IGNORE)  # every untrained token now carries weight 0.1
    assert n == b.n_weighted > 0 and f'data-diff="{n}"' in summary
    assert "labelled or weighted differently" in summary and "prompt_loss_weight=0.1" in summary
    assert len(re.findall(r'class="[^"]*\bd\b[^"]*"', views[1])) == n and f"{b.n_weighted} weighted" in views[1]


# ------------------------------------------------------------------------------------------------------ images
def test_image_runs_fold_in_the_token_view_with_their_label_state(vl_dirs, smol_tok):
    tok_dir, data_dir = vl_dirs
    s = Session(tokenizer_name=str(tok_dir))
    s.data = tab_inspect.load_dataset(data_dir / "vl.jsonl", "vl.jsonl")
    out = tab_inspect.view(s)
    assert out.error == "", out.error
    runs = re.findall(r'<details class="imgrun( tr)?" data-label="(-?\d+)" data-n="(\d+)" data-pos="(\d+)">'
                      r'<summary[^>]*>([^<]*)</summary>', out.view)
    assert [(tr, lab, n, text) for tr, lab, n, _, text in runs] == [("", "-100", "9", "&lt;image&gt; ×9")]
    assert len(TOKEN_RE.findall(out.view)) == len(s.render_current().input_ids)  # the folded tokens stay in the view
    assert 'data-legend="images"' in out.legend
    # no processor beside the tokenizer: the text rendering, and a finding that says why
    text_only = Session(tokenizer_name=str(tok_dir / "tokenizer_only"), data=s.data)
    found = tab_inspect.view(text_only).findings
    assert 'data-code="images_not_processed"' in found and "Tokenizer box" in found
    embedded = tab_inspect.view(Session(data=s.data))  # SmolLM2's template takes string content only
    assert "failed to render" in embedded.error and "This row has 1 image. Load the vision" in embedded.error


@pytest.fixture(scope="module")
def vl_dirs(tmp_path_factory, smol_tok):
    from tests.vision_reference import save_vision_data, save_vision_tokenizer

    return save_vision_tokenizer(smol_tok, tmp_path_factory.mktemp("vl_tok")), save_vision_data(
        tmp_path_factory.mktemp("vl_data"))
