"""Every MaskConfig option is a CLI flag (render/audit/train share them), and the CLI renders exactly what
core.engine.render_examples renders with the same MaskConfig. Bad values: exit 2, the flag named, no traceback."""

import json
from pathlib import Path

import pytest

from core.cli import _config, build_parser, main
from core.masking.options import MaskConfig
from core.data.formats import load_examples
from core.masking.engine import render_examples
from core.masking.rules import load_rules, rules_config
from core.masking.strategies import strategy_names, unregister
from core.masking.user_code import load_collator_file, load_strategy_file

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"
ASSETS = Path(__file__).parent / "assets"
QWEN3 = Path(__import__("trl").__file__).parent / "chat_templates" / "qwen3.jinja"


@pytest.fixture(autouse=True)
def clean_registry():
    before = set(strategy_names())
    yield
    for n in set(strategy_names()) - before:
        unregister(n)


@pytest.fixture(scope="module")
def qwen3_dir(family_tok, tmp_path_factory):
    """A tokenizer directory carrying Qwen3's template (<think> as single tokens), as --tokenizer takes it."""
    d = tmp_path_factory.mktemp("qwen3_tok")
    family_tok("qwen3").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def qwen3_tok(qwen3_dir):
    from core.models import load_tokenizer

    return load_tokenizer(str(qwen3_dir))


def cli_render(tmp_path, data, *flags) -> list[dict]:
    out = tmp_path / "out.jsonl"
    assert main(["render", "--data", str(data), "--output", str(out), *flags]) == 0
    return [json.loads(x) for x in out.read_text().splitlines()]


def engine_render(data, tok, cfg):
    return render_examples(load_examples(data), tok, cfg)


def same(recs, rendered):
    assert len(recs) == len(rendered)
    for rec, r in zip(recs, rendered):
        assert (rec["row"], rec["input_ids"], rec["labels"]) == (r.row, r.input_ids, r.labels)
        assert rec.get("turn") == r.turn


def trained_parts(rendered, tok) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rendered:
        for t in r.tokens(tok):
            if t.label != -100:
                out[t.part] = out.get(t.part, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------ each option
def test_reasoning_mask_trains_no_reasoning_token(tmp_path, qwen3_dir, qwen3_tok):
    data = SAMPLES / "reasoning.jsonl"
    for mode in ("train", "mask"):
        recs = cli_render(tmp_path, data, "--tokenizer", str(qwen3_dir), "--strategy", "assistant_only",
                          "--reasoning", mode)
        ref = engine_render(data, qwen3_tok, MaskConfig("assistant_only", reasoning=mode))
        same(recs, ref)
        parts = trained_parts(ref, qwen3_tok)
        if mode == "train":
            assert parts.get("reasoning", 0) > 50
        else:
            assert "reasoning" not in parts and parts["content"] > 50


def test_mask_tokens_never_trains_them(tmp_path, smol_tok):
    data = SAMPLES / "chat_multiturn.jsonl"
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    default = cli_render(tmp_path, data, "--strategy", "assistant_only")
    assert any(la == im_end for r in default for la in r["labels"])
    recs = cli_render(tmp_path, data, "--strategy", "assistant_only", "--mask-tokens", "<|im_end|>")
    same(recs, engine_render(data, smol_tok, MaskConfig("assistant_only", mask_tokens=("<|im_end|>",))))
    assert not any(la == im_end for r in recs for la in r["labels"])
    assert sum(r["n_trained"] for r in recs) > 0


def test_mask_tokens_repeatable_and_comma_separated():
    ns = build_parser().parse_args(["render", "--data", "x.jsonl", "--output", "o.jsonl", "--strategy", "full",
                                    "--mask-tokens", "</think>,<think>", "--mask-tokens", "<|im_end|>"])
    assert _config(ns).mask_tokens == ("</think>", "<think>", "<|im_end|>")


def test_defaults_are_trls():
    ns = build_parser().parse_args(["audit", "--data", "x.jsonl", "--strategy", "assistant_only"])
    assert _config(ns) == MaskConfig("assistant_only")


@pytest.mark.parametrize("source", ["trl", "own"])
def test_template_source(tmp_path, qwen3_dir, qwen3_tok, source):
    data = SAMPLES / "reasoning.jsonl"
    recs = cli_render(tmp_path, data, "--tokenizer", str(qwen3_dir), "--strategy", "assistant_only",
                      "--template-source", source)
    ref = engine_render(data, qwen3_tok, MaskConfig("assistant_only", template_source=source))
    same(recs, ref)
    assert any(r.template_swapped for r in ref) == (source == "trl")  # Qwen3: TRL swaps in its training twin


def test_empty_think_mask(tmp_path, qwen3_dir, qwen3_tok):
    data = SAMPLES / "chat_multiturn.jsonl"
    cfgs = {m: MaskConfig("assistant_only", template_source="own", empty_think=m) for m in ("train", "mask")}
    assert trained_parts(engine_render(data, qwen3_tok, cfgs["train"]), qwen3_tok).get("scaffold", 0) > 0
    recs = cli_render(tmp_path, data, "--tokenizer", str(qwen3_dir), "--strategy", "assistant_only",
                      "--template-source", "own", "--empty-think", "mask")
    ref = engine_render(data, qwen3_tok, cfgs["mask"])
    same(recs, ref)
    assert "scaffold" not in trained_parts(ref, qwen3_tok)


def test_split_turns(tmp_path, smol_tok):
    data = SAMPLES / "chat_multiturn.jsonl"
    recs = cli_render(tmp_path, data, "--strategy", "assistant_only", "--split-turns")
    ref = engine_render(data, smol_tok, MaskConfig("assistant_only", split_turns=True))
    same(recs, ref)
    assert len(recs) > len(load_examples(data)) and all("turn" in r for r in recs)


def test_pad_token(tmp_path, smol_tok):
    data = SAMPLES / "chat_multiturn.jsonl"
    flags = ["--strategy", "response_template", "--response-template", "<|im_start|>assistant\n"]
    recs = cli_render(tmp_path, data, *flags, "--pad-token", "<|endoftext|>")
    cfg = MaskConfig("response_template", response_template="<|im_start|>assistant\n", pad_token="<|endoftext|>")
    same(recs, engine_render(data, smol_tok, cfg))
    default = cli_render(tmp_path, data, *flags)  # pad = <|im_end|> (SmolLM2's), which masks every EOS
    assert sum(r["n_trained"] for r in recs) > sum(r["n_trained"] for r in default)


# ------------------------------------------------------------------------------------------- your own strategies
def test_rules_file_instead_of_strategy(tmp_path, smol_tok):
    data = SAMPLES / "chat_multiturn.jsonl"
    recs = cli_render(tmp_path, data, "--rules", str(ASSETS / "rules" / "first_turn.json"))
    same(recs, engine_render(data, smol_tok, rules_config(load_rules(ASSETS / "rules" / "first_turn.json"))))
    assert recs != cli_render(tmp_path, data, "--strategy", "assistant_only")


def test_strategy_file(tmp_path, smol_tok):
    data = SAMPLES / "agent_traces.jsonl"
    f = ASSETS / "user_code" / "no_tool_calls.py"
    recs = cli_render(tmp_path, data, "--strategy-file", str(f))  # it registers one strategy: the default
    names = load_strategy_file(f)
    same(recs, engine_render(data, smol_tok, MaskConfig(names[0])))


def test_collator_file(tmp_path, smol_tok):
    data = SAMPLES / "chat_multiturn.jsonl"
    f = ASSETS / "user_code" / "team_collator.py"
    recs = cli_render(tmp_path, data, "--collator", str(f), "--strategy", "collator:team_collator")
    same(recs, engine_render(data, smol_tok, MaskConfig(load_collator_file(f))))


def test_audit_and_train_take_the_same_flags():
    p = build_parser()
    for sub in ("audit", "train"):
        extra = ["--max-steps", "1", "--output-dir", "o"] if sub == "train" else []
        ns = p.parse_args([sub, "--data", "x.jsonl", "--strategy", "assistant_only", "--reasoning", "mask",
                           "--empty-think", "mask", "--template-source", "own", "--mask-tokens", "</think>",
                           "--pad-token", "<|endoftext|>", *extra])
        assert _config(ns) == MaskConfig("assistant_only", reasoning="mask", empty_think="mask",
                                         template_source="own", mask_tokens=("</think>",), pad_token="<|endoftext|>")


# ------------------------------------------------------------------------------------------------ bad values
DATA = str(SAMPLES / "chat_multiturn.jsonl")
BAD = [
    (["--strategy", "nope"], ["--strategy", "'nope'", "assistant_only", "last_assistant", "--rules"]),
    (["--strategy", "full", "--split-turns"], ["--split-turns", "assistant_only"]),
    (["--strategy", "response_template", "--response-template", "x", "--pad-token", "<|no_such|>"],
     ["--pad-token", "<|no_such|>", "vocabulary"]),
    (["--rules", str(ASSETS / "rules" / "bad_turns.yaml")], ["bad_turns.yaml", "turns"]),
    (["--strategy-file", str(ASSETS / "user_code" / "broken_syntax.py")], ["broken_syntax.py", "line 5"]),
    (["--strategy-file", str(ASSETS / "user_code" / "no_tool_calls.py"), "--rules",
      str(ASSETS / "rules" / "first_turn.json")], ["--strategy is required", "rules:first_turn"]),
    (["--strategy", "assistant_only", "--max-length", "0"], ["--max-length", "positive"]),
]


@pytest.mark.parametrize("flags,expect", BAD, ids=[" ".join(b[0][:2]) + str(i) for i, b in enumerate(BAD)])
def test_bad_values_exit_2_naming_the_flag(tmp_path, capsys, flags, expect):
    assert main(["audit", "--data", DATA, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for s in expect:
        assert s in err, (s, err)


@pytest.mark.parametrize("flags,flag", [
    (["--strategy", "full", "--reasoning", "maybe"], "--reasoning"),
    (["--strategy", "full", "--empty-think", "yes"], "--empty-think"),
    (["--strategy", "full", "--template-source", "mine"], "--template-source"),
    (["--strategy", "full", "--mask-tokens", ","], "--mask-tokens"),
])
def test_bad_choices_are_argparse_errors(capsys, flags, flag):
    with pytest.raises(SystemExit) as e:
        main(["audit", "--data", DATA, *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
