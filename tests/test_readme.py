"""Every command in the README's fenced bash blocks names a program that exists and options it takes, so the
README cannot go stale: the project's own commands are parsed by their real argument parsers (nothing is
run), `mlflow server` is checked against its --help, and the files other commands name exist."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_commands() -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out += [c.strip() for c in line.split("&&")]
    return out


COMMANDS = fenced_commands()


def parsers():
    from meme import cli
    from orchestration import report, submit, sweep

    return {"meme": cli.build_parser, "orchestration/sweep.py": sweep.build_parser,
            "orchestration/report.py": report.build_parser, "orchestration/submit.py": submit.build_parser}


def program_and_args(cmd: str) -> tuple[str, list[str]]:
    words = shlex.split(os.path.expandvars(cmd.replace("$PWD", str(ROOT))))
    cut = [i for i, w in enumerate(words) if w in (">", ">>", "|")]   # the shell's redirection is not the program's
    words = words[:cut[0]] if cut else words
    prog = words[0]
    if prog in ("python", "python3", ".venv/bin/python") and len(words) > 1 and words[1].endswith(".py"):
        return words[1], words[2:]
    if prog in (".venv/bin/meme", "meme"):
        return "meme", words[1:]
    return prog, words[1:]


def test_the_readme_has_its_commands():
    assert len(COMMANDS) >= 20
    first = COMMANDS[:3]
    # the set-up line activates the environment, so `python ...` and `meme ...` work as written after it
    assert first == ["python3 -m venv .venv", ".venv/bin/pip install -e '.[dev]'", "source .venv/bin/activate"]
    assert COMMANDS[3] == "python -m pytest -q"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_names_real_programs_and_options(cmd, capsys):
    prog, args = program_and_args(cmd)
    builders = parsers()
    if prog in builders:
        parser = builders[prog]()
        try:
            if prog == "orchestration/submit.py":   # the options it does not know go to sweep.py
                _, rest = parser.parse_known_args(args)
                builders["orchestration/sweep.py"]().parse_args(rest)
            else:
                parser.parse_args(args)
        except SystemExit:
            raise AssertionError(f"{cmd!r}: {capsys.readouterr().err.strip()}") from None
        assert capsys.readouterr().err == ""
    elif prog.startswith("benchmarks/"):
        help_text = subprocess.run([sys.executable, str(ROOT / prog), "--help"], capture_output=True, text=True,
                                   cwd=ROOT, timeout=300).stdout
        for flag in (a.split("=")[0] for a in args if a.startswith("--")):
            assert flag in help_text, f"{cmd!r}: {prog} has no option {flag}"
    elif prog == "mlflow":
        help_text = subprocess.run([sys.executable, "-m", "mlflow", *args[:1], "--help"], capture_output=True,
                                   text=True, timeout=300).stdout
        for flag in (a for a in args if a.startswith("--")):
            assert flag in help_text, f"{cmd!r}: mlflow {args[0]} has no option {flag}"
    elif prog in ("cp", "docker"):
        named = [a for a in args if "/" in a and not a.startswith("-")]
        assert named and (ROOT / named[0 if prog == "docker" else 0]).exists(), f"{cmd!r}: {named[0]} is missing"
    elif prog in ("python3", "source", "python") or prog.startswith(".venv/bin/pip"):
        pass   # the set-up and test lines, checked above
    else:
        raise AssertionError(f"{cmd!r}: the README names a program the test does not know ({prog}); teach it here")


def test_program_lookup_catches_a_stale_option():
    from meme import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--out", "x", "--no-such-option"])
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)


def test_the_study_table_names_every_shipped_study_with_its_number_of_trials():
    from orchestration.study import load_study, study_names

    table = {name: int(n) for name, n in re.findall(r"^\| `(\w+)` \| (\d+) \|", README, re.M)}
    assert table == {name: load_study(name).num_trials() for name in study_names()}
