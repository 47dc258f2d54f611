"""``python -m studies <study> [flags]``: the studies that need the exported ONNX file."""

from __future__ import annotations

import argparse
import sys

from training.data import DatasetNotFoundError
from training.experiments import EXPERIMENTS

from . import bn_test_time

STUDIES = {"bn-test-time": bn_test_time}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in STUDIES.items():
        module.add_arguments(sub.add_parser(name, help=EXPERIMENTS[name].help, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return STUDIES[args.command].main(args)
    except (ValueError, FileNotFoundError, DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
