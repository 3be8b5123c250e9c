"""Every `numgpt ...` command line that the CLI's --help texts, README.md and docs/*.md teach parses with
the real parser: a help text or a README that shows a command line the CLI refuses is a defect (`numgpt
data synth 2000 --out ...` once stood in the examples of sft and rl, where synth takes --n)."""

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

from numgpt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SHELL = set("|<>$`&")         # a line that pipes, redirects, expands or backgrounds is shell, not one command


def subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the root and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, (*path, name))


def help_examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines of a parser's epilog: the indented lines that start with `numgpt `, cut
    at the two spaces that start their comment."""
    found = []
    for line in (parser.epilog or "").splitlines():
        m = re.match(r"\s+(numgpt\s.*)", line)
        if m:
            found.append(re.split(r"\s{2,}", m.group(1).rstrip())[0])
    return found


def markdown_commands(path: Path) -> list[str]:
    """The `numgpt ...` lines of a Markdown file's code blocks (continuation lines joined, `#` comments cut)."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            m = re.match(r"(?:\$ )?(numgpt\s.*)", line.strip())
            if m:
                found.append(re.split(r"\s+#", m.group(1))[0].strip())
    return found


def refusal(parser: argparse.ArgumentParser, command: str) -> str | None:
    """The parser's error for a `numgpt ...` command line, or None when it parses."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(shlex.split(command)[1:])
    except SystemExit as e:
        if e.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


def check_all(sources: list[tuple[str, str]], at_least: int) -> None:
    """Every (where, command) parses, and more than `at_least` were checked (so that a change in how the
    examples are written cannot leave this test checking nothing)."""
    root = build_parser()
    checked = [(where, c) for where, c in sources if not SHELL & set(c)]
    refused = [f"{where}: {c!r}: {error}" for where, c in checked if (error := refusal(root, c))]
    assert not refused, "\n".join(refused)
    assert len(checked) > at_least


def test_every_help_example_parses():
    check_all([(f"numgpt {' '.join(path)} --help", c) for path, p in subparsers(build_parser())
               for c in help_examples(p)], at_least=100)               # 159 when this was written


def test_every_command_line_in_the_readme_and_docs_parses():
    check_all([(path.name, c) for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
               for c in markdown_commands(path)], at_least=40)         # 57 when this was written


def test_every_output_flag_takes_all_three_spellings():
    # --out in prepare, train and plot, --output in train-tokenizer and explain: `plot --output` was refused
    for path, parser in subparsers(build_parser()):
        for action in parser._actions:
            if "-o" in action.option_strings:
                assert set(action.option_strings) == {"-o", "--out", "--output"}, (path, action.option_strings)
