"""The argparse shapes that `numgpt`'s commands share: a command made of subcommands (`numgpt classify
train ...`, `numgpt data synth ...`), and a subcommand whose --help keeps its examples as written."""

from __future__ import annotations

import argparse


def command_group(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                  epilog: str) -> argparse._SubParsersAction:
    """Add `numgpt NAME SUBCOMMAND ...` and return what its subcommands are added to; `numgpt NAME` alone
    prints its help. The subcommand chosen is args.NAME_command."""
    p = subcommand(sub, name, help=help, description=description, epilog=epilog)
    p.set_defaults(run=lambda args: p.print_help() or 0)
    return p.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND")


def subcommand(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
               epilog: str) -> argparse.ArgumentParser:
    """Add the (sub)command NAME: its description, and the epilog's examples kept as laid out."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
