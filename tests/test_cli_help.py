"""`detector COMMAND --help` is plain text: docstrings' reStructuredText rendered once, in detector.cli."""

import re

import pytest

from detector.cli import COMMANDS, main, plain_text


def test_plain_text_renders_roles_literals_and_literal_blocks():
    assert plain_text("see :mod:`detector.report` and :func:`~x.y`") == "see detector.report and x.y"
    assert plain_text("run ``detector report RUN`` on `eval/`") == "run 'detector report RUN' on 'eval/'"
    assert plain_text("like this::\n\n    detector report RUN") == "like this:\n\n    detector report RUN"
    assert plain_text("Example ::") == "Example:"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_markup_and_keeps_usage_lines(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main([command, "--help"] if command else ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "`" not in text and not re.search(r":[a-z]+:", text.replace("default:", "")), text
    assert max(map(len, text.splitlines())) <= 110  # wrapped to the terminal, usage examples as written


def test_usage_examples_stay_on_their_own_lines(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "  detector export --checkpoint CKPT --format onnx --out model.onnx" in lines
    assert all(len(line) <= 80 for line in lines if not line.startswith("  detector "))
