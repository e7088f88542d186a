"""The `ropelab` console script: the top entry point, above flows, tasks and the library.

Pure commands (`ropelab rope ...`) come from the library; orchestration commands import their flow lazily,
so `ropelab rope show` starts without paying for Prefect and MLflow imports.
"""

from __future__ import annotations

import argparse
import sys

import ropelab  # noqa: F401  (enforces the offline settings before any heavy import)
from ropelab.errors import RopelabError
from ropelab.rope import cli as rope_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ropelab", description="Context-window extension for RoPE models.")
    parser.add_argument("--version", action="version", version=f"ropelab {ropelab.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    rope_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RopelabError as exc:
        print(f"ropelab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ropelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
