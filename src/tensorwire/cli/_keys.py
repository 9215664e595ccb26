"""`tensorwire keys generate DIR --name NAME`: CurveZMQ keys for tcp."""

from __future__ import annotations

import argparse
import sys

from ..transport import generate


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="CurveZMQ keys and the client allow-list for tcp")
    actions = p.add_subparsers(dest="action", required=True)
    gen = actions.add_parser(
        "generate", help="create the server keypair (first time) and an allowed client keypair"
    )
    gen.add_argument("directory", metavar="DIR", help="the auth directory (created, mode 0700)")
    gen.add_argument("--name", default="client", help="the client's name (default: client)")
    gen.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        secret = generate(args.directory, args.name)
    except (OSError, ValueError) as exc:
        print(f"tensorwire: error: {exc}", file=sys.stderr)
        return 2
    print(f"tensorwire: client key {secret} (give it, with server.key, to that client)")
    print(f"tensorwire: serve with --auth-dir {args.directory}; revoke by deleting "
          f"clients/{args.name}.key")
    return 0
