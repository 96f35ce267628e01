"""A Sphinx directive that renders ``qfocal --help`` and every subcommand's ``--help`` from the real parser.

``qfocal.cli.build_parser()`` is imported at build time, so the command-line page can never drift from the code:

    ```{cli-help}
    ```

renders one section per subcommand, each with its ``--help`` as a literal block.
"""

from __future__ import annotations

import argparse
import os

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the page does not depend on the terminal that built it.
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_help()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


class CliHelp(SphinxDirective):
    """``qfocal --help``, then a section per subcommand (and per sub-subcommand) with its ``--help``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from qfocal.cli import build_parser

        parser = build_parser()
        out: list[nodes.Node] = [nodes.literal_block(text=_help(parser), language="text")]
        out += self._sections(parser, "qfocal")
        return out

    def _sections(self, parser: argparse.ArgumentParser, prefix: str) -> list[nodes.Node]:
        sections = []
        for name, sub in _subparsers(parser).items():
            if sub in _subparsers(parser).values() and name != sub.prog.split()[-1]:
                continue  # an alias: its parser is documented under its own name
            title = f"{prefix} {name}"
            section = nodes.section(ids=[nodes.make_id(title)], names=[nodes.fully_normalize_name(title)])
            section += nodes.title(text=title)
            section += nodes.literal_block(text=_help(sub), language="text")
            section += self._sections(sub, title)
            self.state.document.note_implicit_target(section, section)
            sections.append(section)
        return sections


def setup(app: Sphinx) -> dict:
    app.add_directive("cli-help", CliHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
