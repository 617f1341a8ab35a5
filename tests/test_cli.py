"""The CLI frame: --version, --help without torch, python -m, and the one error idiom."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

import aidetect
from aidetect.errors import AidetectError, WeightsError

# The module, not the Typer object that aidetect.cli re-exports under the same name.
app_module = importlib.import_module("aidetect.cli.app")
# Register the commands now, so that patching `app` below does not reach the command modules.
app_module._register_commands()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from aidetect.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'open_clip', 'numpy', 'PIL') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert "HEAVY=\n" in result.stdout


def test_version_through_python_dash_m():
    result = _run("-m", "aidetect", "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"aidetect {aidetect.__version__}"


def test_user_errors_are_one_line_with_their_exit_code(monkeypatch, capsys):
    def failing_app(**kwargs):
        raise WeightsError("no weights here: pass --weights PATH")

    monkeypatch.setattr(app_module, "app", failing_app)
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["models"])
    assert exit_info.value.code == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "aidetect: error: no weights here: pass --weights PATH\n"


def test_debug_variable_shows_the_traceback(monkeypatch):
    def failing_app(**kwargs):
        raise AidetectError("boom", exit_code=3)

    monkeypatch.setattr(app_module, "app", failing_app)
    monkeypatch.setenv("AIDETECT_DEBUG", "1")
    with pytest.raises(AidetectError, match="boom"):
        app_module.main(["models"])


def test_unknown_command_is_a_usage_error():
    result = _run("-m", "aidetect", "no-such-command")
    assert result.returncode == 2
    assert "no-such-command" in result.stderr


def test_models_lists_presets_without_importing_torch():
    code = (
        "import sys\n"
        "from aidetect.cli import main\n"
        "try:\n"
        "    main(['models', '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('TORCH=' + str('torch' in sys.modules))\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert '"univfd"' in result.stdout and "TORCH=False" in result.stdout


def test_a_closed_stdout_pipe_exits_141_and_ctrl_c_130(monkeypatch, capsys):
    import typer

    # stdout is pytest's here: record what would be pointed at /dev/null instead.
    redirected = []
    monkeypatch.setattr(app_module.os, "dup2", lambda src, dst: redirected.append(dst))
    monkeypatch.setattr(app_module.sys, "stdout", SimpleNamespace(fileno=lambda: 1))
    with pytest.raises(typer.Exit) as exit_info, app_module.interruptions():
        raise BrokenPipeError
    assert exit_info.value.exit_code == 141 and redirected == [1]
    assert capsys.readouterr().err == ""  # quiet: the reader went away on purpose
    with pytest.raises(typer.Exit) as exit_info, app_module.interruptions():
        raise KeyboardInterrupt
    assert exit_info.value.exit_code == 130
    assert capsys.readouterr().err == "aidetect: error: interrupted\n"


@pytest.mark.parametrize(("args", "expected"), [
    (["scan", "photos", "--bogus"], "No such option: --bogus (see aidetect scan --help)"),
    (["scan", "photos", "--format", "xml"], "Invalid value for '--format'"),
    (["scan", "photos", "--threshold", "1.5"], "Invalid value for '--threshold'"),
    (["convert", "x.pth"], "Missing option '--out'"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_usage_errors_are_one_line_exit_2(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(args)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.startswith("aidetect: error: ") and captured.err.count("\n") == 1
    assert expected in captured.err
    assert not any(box in captured.err for box in "╭│╰")  # not Typer's panel
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_no_arguments_shows_the_help_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        app_module.main([])
    assert exit_info.value.code == 2 and "Usage: aidetect" in capsys.readouterr().out


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["scan", "--help"])
    assert exit_info.value.code == 0 and "Usage: aidetect scan" in capsys.readouterr().out


def test_an_unexpected_exception_is_an_internal_error_exit_70(monkeypatch, capsys):
    from aidetect.errors import EXIT_INTERNAL

    def buggy_app(**kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(app_module, "app", buggy_app)
    monkeypatch.delenv("AIDETECT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["models"])
    assert exit_info.value.code == EXIT_INTERNAL == 70
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("aidetect: error: internal error: ZeroDivisionError: division by "
                            "zero second line (set AIDETECT_DEBUG=1 for the traceback; please "
                            "report it)\n")
    monkeypatch.setenv("AIDETECT_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        app_module.main(["models"])


def test_an_unexpected_exception_in_a_real_command_exits_70(monkeypatch, capsys):
    import aidetect.presets

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(aidetect.presets, "load_presets", broken)
    monkeypatch.delenv("AIDETECT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["models", "--json"])
    assert exit_info.value.code == 70
    assert "internal error: TypeError: unsupported operand" in capsys.readouterr().err


COMMANDS = ("scan", "train", "finetune", "eval", "models", "convert", "push", "inspect")
# Lines each help must hold whole at 80 columns: nothing cut with an ellipsis, no list re-wrapped.
WHOLE_LINES = {
    "scan": ["aidetect scan ./photos --fail-on-ai         # exit 1 if an image is AI-made",
             "0    every file found was scored",
             "3    not every file was scored: some could not be, or none were found",
             "70   internal error, a bug (AIDETECT_DEBUG=1 shows the traceback)",
             "130  interrupted (Ctrl-C); the report of what was scanned is still written",
             "141  the reader of stdout went away (aidetect scan ... | head)",
             "2 and 4 win over 1, and 1 over 3."],
    "train": ["DATA/<class>/{0_real,1_fake}."],
    "finetune": ["DATA/<class>/{0_real,1_fake}."],
    "eval": ["BENCH/<subset>/{0_real,1_fake}."],
    "convert": ["aidetect convert fc_weights.pth --format univfd --out univfd-head",
                "--out must be a new or empty folder (or a new file with --single-file)."],
    "push": ["aidetect push runs/exp1 --repo me/my-detector"],
    "models": ["aidetect models --json > models.json"],
    "inspect": ["3    some metadata could not be read (see \"error\")"],
}
# The command list at 80 columns: each command's whole summary, never cut with "...".
SUMMARIES = {
    "eval": "Accuracy and AP per benchmark subset; calibration.",
    "inspect": "Show what files declare about their origin.",
    "train": "Train a detector with the DGS-Net recipe.",
    "finetune": "Teach an existing detector new generators.",
    "push": "Upload a detector folder to the Hugging Face Hub.",
    "cache": "The score cache: list or clear the scores kept.",
}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_keeps_every_line_whole(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        app_module.main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "…" not in out and "╭" not in out  # no truncated cell, no panel
    lines = [line.strip() for line in out.splitlines()]
    for whole in WHOLE_LINES[command]:
        assert any(whole in line for line in lines), whole
    assert max(len(line) for line in out.splitlines()) <= 80


def test_command_list_at_80_columns_cuts_no_summary(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        app_module.main(["--help"])
    out = capsys.readouterr().out
    commands = out.split("Commands:")[1]
    assert "..." not in commands and max(len(line) for line in out.splitlines()) <= 80
    for command, summary in SUMMARIES.items():
        assert f"{command}" in out and summary in out, command


def test_models_table_and_json_spell_license_alike(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        app_module.main(["models"])
    table = capsys.readouterr().out
    with pytest.raises(SystemExit):
        app_module.main(["models", "--json"])
    document = capsys.readouterr().out
    assert "license" in table and "licence" not in table
    assert '"license"' in document and "licence" not in document


def test_a_closed_pipe_outside_scan_exits_141_not_1(monkeypatch, capsys):
    import errno

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["models", "--json"])
    assert exit_info.value.code == 141
