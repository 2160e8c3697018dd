"""`nbo ope`: off-policy evaluation of a candidate policy from a logged dataset (training/ope.py)."""

from __future__ import annotations

import argparse

NAME = "ope"
HELP = "off-policy evaluation of a candidate policy from a logged dataset (nbo ope --help)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training import ope

    p.description = ope.DESCRIPTION
    ope.add_arguments(p)


def run(opts: argparse.Namespace) -> int:
    from training import ope

    return ope.run(opts)
