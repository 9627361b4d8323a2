"""The CLI contract scripts depend on: one JSON object per input row, in order; audit keys; bad input -> exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main

REPO = Path(__file__).resolve().parents[1]
CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"},
                  {"role": "assistant", "content": "Yes."}]},
    {"conversations": [{"from": "human", "value": "Ping"}, {"from": "gpt", "value": "Pong"}]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_render_writes_one_object_per_row_in_order(tmp_path, smol_tok):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    out = tmp_path / "out.jsonl"
    assert main(["render", "--data", str(data), "--strategy", "last_assistant", "--output", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["row"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert len(r["input_ids"]) == len(r["labels"]) and isinstance(r["findings"], list)
    trained = smol_tok.decode([t for t, la in zip(recs[1]["input_ids"], recs[1]["labels"]) if la != -100])
    assert trained == "Yes.<|im_end|>"
    assert any(f["code"] == "roles_mapped" for f in recs[2]["findings"])


def test_template_arguments_are_literal(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT[:1])
    out = tmp_path / "out.jsonl"
    # a real newline matches ChatML's header; the two characters backslash-n do not
    assert main(["render", "--data", str(data), "--strategy", "response_template",
                 "--response-template", "<|im_start|>assistant\n", "--output", str(out)]) == 0
    assert not any(f["code"] == "template_not_found" for f in json.loads(out.read_text())["findings"])
    assert main(["render", "--data", str(data), "--strategy", "response_template",
                 "--response-template", "<|im_start|>assistant\\n", "--output", str(out)]) == 0
    assert any(f["code"] == "template_not_found" for f in json.loads(out.read_text())["findings"])


def test_response_template_ids(tmp_path, smol_tok):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT[:1])
    out = tmp_path / "out.jsonl"
    ids = ",".join(map(str, smol_tok.encode("<|im_start|>assistant\n", add_special_tokens=False)))
    assert main(["render", "--data", str(data), "--strategy", "response_template", "--response-template-ids", ids,
                 "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert smol_tok.decode([t for t, la in zip(rec["input_ids"], rec["labels"]) if la != -100]) == "Hello!\n"


def test_audit_json(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    assert main(["audit", "--data", str(data), "--strategy", "assistant_only", "--max-length", "30",
                 "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for k in ("examples", "tokens", "trained_tokens", "examples_without_trained_tokens", "examples_truncated",
              "findings"):
        assert k in rep
    assert rep["examples"] == 3 and rep["examples_truncated"] >= 1
    assert rep["findings"].get("truncated_supervision", 0) + rep["findings"].get("no_trained_tokens", 0) >= 1


def test_audit_text(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    assert main(["audit", "--data", str(data), "--strategy", "full", "--format", "text"]) == 0
    assert "trained tokens" in capsys.readouterr().out


BAD = [
    ("malformed.jsonl", '{"messages": [{"role": "user", "content": "Hi"}]}\n{"messages": [oops\n', r"row 1.*line 2.*not valid JSON"),
    ("missing.jsonl", '{"foo": 1}\n', r"row 0.*no known field"),
    ("role.jsonl", '{"messages": [{"role": "wizard", "content": "Hi"}]}\n', r"messages\[0\]\.role.*unknown role 'wizard'"),
    ("content.jsonl", '{"messages": [{"role": "user", "content": 42}]}\n', r"messages\[0\]\.content.*must be a string"),
    ("empty.jsonl", "", r"empty"),
]


@pytest.mark.parametrize("name,text,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exit_2_with_location(tmp_path, capsys, name, text, pattern):
    f = tmp_path / name
    f.write_text(text)
    assert main(["audit", "--data", str(f), "--strategy", "full"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(f) in err and "Traceback" not in err
    assert __import__("re").search(pattern, err), err


def test_bad_tokenizer_and_template(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    assert main(["audit", "--data", str(data), "--strategy", "full", "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    tpl = tmp_path / "bad.jinja"
    tpl.write_text("{% for m in messages %}{{ m['content'] }{% endfor %}")
    assert main(["audit", "--data", str(data), "--strategy", "full", "--chat-template", str(tpl)]) == 2
    err = capsys.readouterr().err
    assert "chat template failed to render" in err and "row 0" in err


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    f = tmp_path / "role.jsonl"
    f.write_text('{"messages": [{"role": "wizard", "content": "Hi"}]}\n')
    p = subprocess.run([sys.executable, "-m", "core", "render", "--data", str(f), "--strategy", "full",
                        "--output", str(tmp_path / "o.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown role" in p.stderr
    assert not (tmp_path / "o.jsonl").exists()
