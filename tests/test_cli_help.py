"""`python -m core <sub> --help` is the first command a newcomer types: it must work for every subcommand and list
every option (argparse %-formats help strings, so a literal `{% generation %}` once crashed it)."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers())


def test_every_known_subcommand_is_covered():
    assert {"render", "audit", "train", "checks", "experiment", "evaluate"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_exits_0_and_lists_every_option(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m core " + sub)
    options = [s for a in _subparsers()[sub]._actions for s in a.option_strings]
    assert len(options) > 3
    missing = [o for o in options if o not in out]
    assert not missing, f"{sub} --help does not show {missing}"
    # every option documented (argparse prints nothing after an option without help)
    undocumented = [a.option_strings[0] for a in _subparsers()[sub]._actions if a.option_strings and not a.help]
    assert not undocumented, f"{sub}: options without help text: {undocumented}"


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in SUBCOMMANDS:
        assert sub in out


def test_help_through_the_real_entry_point():
    p = subprocess.run([sys.executable, "-m", "core", "render", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "{% generation %}" in p.stdout
