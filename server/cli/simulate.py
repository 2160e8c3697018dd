"""`nbo simulate`: the real server and learner against the synthetic world (training/closed_loop.py)."""

from __future__ import annotations

import argparse

NAME = "simulate"
HELP = "closed loop: the real server and learner against the synthetic world"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training import closed_loop

    closed_loop.add_arguments(p)


def run(opts: argparse.Namespace) -> int:
    from training import closed_loop

    return closed_loop.run_command(opts)
