"""The `omdx` console script: `omdx tabular ...`, `omdx train`, `omdx compare`, `omdx demo`."""

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omdx", description="Control-oriented model-based RL with implicit differentiation."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    from .tabular._cli import add_tabular_parser

    add_tabular_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
