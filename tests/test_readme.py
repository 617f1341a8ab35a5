"""The README stays true: every `aidetect` command it shows names a real command and real
options, and its test command is the one CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from aidetect.cli.app import _register_commands, app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """Each `aidetect ...` command line in the README's code blocks and inline code."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", README, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    # Inline commands, e.g. in the quick start; mentions such as `aidetect convert` or
    # `aidetect scan ... | head` are not complete commands.
    lines += [code for code in re.findall(r"`([^`\n]+)`", README)
              if re.search(r"\baidetect \w+ \S", code) and "..." not in code
              and "--help" not in code]
    commands = []
    for line in lines:
        line = line.removeprefix("$ ")
        for part in re.split(r"\s*(?:&&|\|)\s*", line.split("  #")[0].replace("\\|", "|")):
            part = re.sub(r"^(?:HF_\w+=\S+\s+)+", "", part.strip())
            if part.startswith(("aidetect ", "torchrun ")):
                commands.append(part)
    return commands


def _click_command(name: str) -> click.Command:
    _register_commands()
    group = typer.main.get_command(app)
    return group.commands[name]


COMMANDS = readme_commands()


def test_the_readme_shows_every_command():
    used = {shlex.split(c)[1] for c in COMMANDS if c.startswith("aidetect ")}
    assert used >= {"scan", "train", "finetune", "eval", "models", "convert", "push"}


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line):
    words = shlex.split(line)
    if words[0] == "torchrun":  # torchrun [its options] -m aidetect CMD ...
        words = ["aidetect", *words[words.index("aidetect") + 1 :]]
    command = _click_command(words[1])
    # Placeholders such as [--private] and [@revision] are shown optional; drop the brackets.
    args = [w.strip("[]") for w in words[2:] if w not in ("...",)]
    if hasattr(command, "commands"):  # a command group: `aidetect cache info`
        command, args = command.commands[args[0]], args[1:]
    context = command.make_context(words[1], args, resilient_parsing=False)
    assert context.params  # parsed: every option exists and every value has the right type


def test_the_quick_start_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert '`pip install -e ".[dev]" && python -m pytest`' in README
    assert "python3 -m pytest -q" in ci and "pip install" in ci and '-e ".[dev]"' in ci
