"""Entry point of the `tensorwire` command."""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import _bench, _diagnose, _huge_pages, _keys, _precision, _serve, _top


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorwire", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tensorwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve.add_parser(sub)
    _bench.add_parser(sub)
    _diagnose.add_parser(sub)
    _precision.add_parser(sub)
    _keys.add_parser(sub)
    _top.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "serve":  # a command line, not a caller in Python
        _huge_pages.restart_with_huge_pages()
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
