"""Every `numgpt ...` example that a command's --help prints parses with the real parser: a help text that
teaches a command line the CLI refuses is a defect (`numgpt data synth 2000 --out ...` once stood in the
examples of sft and rl, where synth takes --n)."""

import argparse
import contextlib
import io
import re
import shlex

from numgpt.cli import build_parser

SHELL = set("|<>$`")          # an example that pipes, redirects or expands is shell, not one command line


def subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the root and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, (*path, name))


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines of a parser's epilog: the indented lines that start with `numgpt `, cut
    at the two spaces that start their comment."""
    found = []
    for line in (parser.epilog or "").splitlines():
        m = re.match(r"\s+(numgpt\s.*)", line)
        if m:
            found.append(re.split(r"\s{2,}", m.group(1).rstrip())[0])
    return found


def test_every_help_example_parses():
    root = build_parser()
    checked, refused = 0, []
    for path, parser in subparsers(root):
        for example in examples(parser):
            if SHELL & set(example):
                continue
            argv = shlex.split(example)[1:]
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    root.parse_args(argv)
            except SystemExit as e:
                if e.code:
                    refused.append(f"numgpt {' '.join(path)} --help: {example!r}: {err.getvalue().strip()}")
            checked += 1
    assert not refused, "\n".join(refused)
    assert checked > 100                         # the examples were found (159 when this was written)


def test_every_command_line_in_the_readme_and_docs_parses():
    """The same for the `numgpt ...` lines of README.md's and docs/*.md's code blocks (a `#` starts a
    comment there)."""
    from pathlib import Path

    root_dir = Path(__file__).resolve().parents[1]
    root = build_parser()
    checked, refused = 0, []
    for path in [root_dir / "README.md", *sorted((root_dir / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():          # continuation lines joined
                m = re.match(r"(?:\$ )?(numgpt\s.*)", line.strip())
                if not m:
                    continue
                command = re.split(r"\s+#", m.group(1))[0].strip()
                if (SHELL | {"&"}) & set(command):
                    continue
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                        root.parse_args(shlex.split(command)[1:])
                except SystemExit as e:
                    if e.code:
                        refused.append(f"{path.name}: {command!r}: {err.getvalue().strip().splitlines()[-1]}")
                checked += 1
    assert not refused, "\n".join(refused)
    assert checked > 40                          # 55 when this was written
