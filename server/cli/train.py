"""`nbo train`: a propensity model from a logged-interaction dataset (the work: training/train.py)."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train a propensity model from a logged-interaction dataset (nbo train --help)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training import train

    p.description = train.DESCRIPTION
    train.add_arguments(p)


def run(opts: argparse.Namespace) -> int:
    if opts.dask is not None:
        # dask is imported only when asked for: plain `nbo train` starts as fast as before
        from training import train_dask

        return train_dask.run(opts)
    from training import train

    return train.run(opts)
