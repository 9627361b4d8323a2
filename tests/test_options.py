"""Each MaskConfig option is defined once (core/masking/options.py, with its metadata) and the CLI flags are generated
from it: every option has a flag, a value given on the command line reaches the MaskConfig unchanged, and the help
text the CLI shows is the option's own."""

from __future__ import annotations

import pytest

from core.cli import _config, build_parser
from core.masking.options import MaskConfig, option, options

# A value away from the default for each option, as typed on the command line -> as MaskConfig holds it.
SAMPLES = {
    "strategy": (["--strategy", "last_assistant"], "last_assistant"),
    "eos": (["--eos", "last_turn"], "last_turn"),
    "train_roles": (["--train-roles", "assistant, tool"], ("assistant", "tool")),
    "response_template": (["--strategy", "response_template", "--response-template", "### A:"], "### A:"),
    "instruction_template": (["--strategy", "response_template", "--response-template", "x",
                              "--instruction-template-ids", "4,5"], [4, 5]),
    "max_length": (["--max-length", "64"], 64),
    "truncation": (["--truncation", "keep_end"], "keep_end"),
    "chat_template": None,  # a file: tested below
    "use_generation_markers": (["--no-generation-markers"], False),
    "template_source": (["--template-source", "own"], "own"),
    "reasoning": (["--reasoning", "mask"], "mask"),
    "empty_think": (["--empty-think", "mask"], "mask"),
    "mask_tokens": (["--mask-tokens", "</think>,<a>", "--mask-tokens", "<b>"], ("</think>", "<a>", "<b>")),
    "split_turns": (["--split-turns"], True),
    "pad_token": (["--strategy", "response_template", "--response-template", "x", "--pad-token", "<p>"], "<p>"),
    "prompt_loss_weight": (["--prompt-loss-weight", "0.1"], 0.1),
    "content_parts": (["--content-parts", "join"], "join"),
}


def cfg_from(args: list[str]) -> MaskConfig:
    ns = build_parser().parse_args(["render", "--data", "x.jsonl", "--output", "o.jsonl", *args])
    if ns.strategy is None:
        ns.strategy = "assistant_only"
    return _config(ns, {})


def test_every_option_has_a_sample():
    assert set(SAMPLES) == {o.name for o in options()}, "a new MaskConfig option needs a sample here"


@pytest.mark.parametrize("name", [n for n, v in SAMPLES.items() if v is not None])
def test_a_flag_reaches_the_config(name):
    args, want = SAMPLES[name]
    got = getattr(cfg_from(args), name)
    assert got == want, (name, got)
    assert getattr(cfg_from([]), name) == option(name).default  # not given: the default (TRL's behaviour)


def test_chat_template_flag_reads_the_file(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages }}")
    assert cfg_from(["--chat-template", str(f)]).chat_template == "{{ messages }}"


def test_help_is_the_options_own(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["render", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for o in options():
        first_words = " ".join(o.help.replace("%", "%%").replace("%%", "%").split()[:4])
        assert first_words in out, (o.name, first_words)
