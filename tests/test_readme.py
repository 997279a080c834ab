"""Every code block in README.md works as written. Blocks run in order, in a scratch copy of the repository's
layout (README.md, the model card, examples/, and ../shared beside it), so the README's own index is the one its
later blocks search. A block preceded by `<!-- readme-test: parse-only (why) -->` is too long to run here (a
36-minute training run, a server): its Python must compile and each `crossrank` command line must parse against
the real CLI (unknown flags, bad choices and wrong types fail). `skip` is only for the setup and test commands."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from crossrank.cli import app

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- readme-test: (skip|parse-only) \((.+?)\) -->")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_blocks() -> list[tuple[str, str, str, int]]:
    """(language, code, mode, line) for each fenced block; mode from the marker on the line before it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        blocks.append((match.group(1), match.group(2), marker.group(1) if marker else "run",
                       text.count("\n", 0, match.start()) + 1))
    return blocks


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split on && and ;."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for word in shlex.split(line, comments=True) + [";"]:
            if word in ("&&", ";", "||"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


class UsageProblem(Exception):
    """A command line the CLI refuses (unknown option, bad choice, wrong type, missing argument)."""


def parse_crossrank(argv: list[str]) -> None:
    """Parse the command line exactly as the CLI would, with every command's body replaced by nothing."""
    command = typer.main.get_command(app)  # a fresh click tree: disarming it leaves `app` untouched
    stack = [command]
    while stack:
        node = stack.pop()
        node.callback = None
        stack.extend(getattr(node, "commands", {}).values())
    try:
        command.main(list(argv), prog_name="crossrank", standalone_mode=False)
    except Exception as exc:  # typer vendors click, so its UsageError is matched by what it carries
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            raise UsageProblem(exc.format_message()) from exc
        raise


def test_shell_and_parse_helpers_catch_what_they_should():
    assert shell_commands("a b \\\n  c   # note\nX=1 d && e 'f g'") == [["a", "b", "c"], ["X=1", "d"], ["e", "f g"]]
    parse_crossrank(["search", "idx", "query", "--top-k", "3", "--format", "json"])
    parse_crossrank(["ltr", "train", "-f", "x.tsv", "--leaves", "7"])
    for bad in (["search", "idx", "q", "--k-best", "3"], ["search", "idx", "q", "--format", "yaml"],
                ["rerank", "-q", "x", "--top-k", "many"], ["nonsense"]):
        with pytest.raises(UsageProblem):
            parse_crossrank(bad)


def test_every_crossrank_command_in_the_readme_parses():
    checked = 0
    for language, code, mode, line in readme_blocks():
        if language != "bash" or mode == "skip":
            continue
        for command in shell_commands(code):
            while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                command = command[1:]  # VAR=value prefixes
            if command and command[0] == "crossrank":
                try:
                    parse_crossrank(command[1:])
                except UsageProblem as exc:
                    pytest.fail(f"README.md line {line}: {shlex.join(command)}: {exc}")
                checked += 1
    assert checked >= 19


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.timeout(2400)  # includes the README's full TREC DL 2020 evaluation
def test_readme_blocks_run_as_written(tmp_path, shared_datasets):
    repo = tmp_path / "repo"
    card = Path("src/crossrank/models/crossrank-minilm-l6-v2/README.md")
    (repo / card.parent).mkdir(parents=True)
    shutil.copy(ROOT / "README.md", repo / "README.md")
    shutil.copy(ROOT / card, repo / card)
    (repo / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "datasets").symlink_to(shared_datasets)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = []
    for language, code, mode, line in readme_blocks():
        if mode != "run":
            if language == "python":
                compile(code, f"README.md:{line}", "exec")
            continue
        argv = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False)
        assert result.returncode == 0, f"README.md line {line} failed:\n{code}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
        ran.append(line)
    assert len(ran) >= 6, ran
    assert (repo / "my-index").is_dir() and (repo / "dl20.html").is_file()
