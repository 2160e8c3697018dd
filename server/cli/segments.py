"""`nbo segments suggest`: cluster the loaded customers and describe each group as a catalog rule
(server/segments does it)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from server.cli.common import console, err_console, open_redis, print_lines, redis_flags

if TYPE_CHECKING:
    import redis

    from server.segments.suggest import Segment, Suggestion
    from server.state.keys import Keys

NAME = "segments"
HELP = "suggested target segments: clusters of the loaded customers, as catalog rules"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="segments_command", required=True)
    p = sub.add_parser("suggest", help="cluster the customers; print each cluster as a rule; write a segments block")
    redis_flags(p)
    p.add_argument("--k", type=int, default=6, help="segments to suggest (default 6)")
    p.add_argument(
        "--method", choices=("kmeans", "gmm"), default="kmeans", help="k-means (default) or a Gaussian mixture"
    )
    p.add_argument("--depth", type=int, default=3, help="depth of the tree the rules come from (default 3)")
    p.add_argument("--sample", type=int, help="cluster a seeded sample of this many customers (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the clustering and the tree (default 0)")
    p.add_argument("--prefix", default="suggested_", help="segment names: PREFIX1..PREFIXk (default suggested_)")
    p.add_argument("--top", type=int, default=3, help="distinguishing features shown per segment (default 3)")
    p.add_argument("--min-awards", type=int, default=30, help="fewer logged awards: 'not enough data' (default 30)")
    p.add_argument("--out", type=Path, help="write the segments: YAML block (with --merge: the whole catalog) here")
    p.add_argument("--merge", type=Path, help="with --out: a catalog file to add the suggested segments to")
    p.add_argument("--json", action="store_true", help="print the suggestion as JSON")


def run(opts: argparse.Namespace) -> int:
    return {"suggest": _suggest}[opts.segments_command](opts)


def _suggest(opts: argparse.Namespace) -> int:
    from server.ids import id_problem
    from server.segments.load import SegmentsError
    from server.segments.suggest import Options, check_options, suggest

    options = Options(
        k=opts.k,
        method=opts.method,
        depth=opts.depth,
        sample=opts.sample,
        seed=opts.seed,
        prefix=opts.prefix,
        top=opts.top,
        min_awards=opts.min_awards,
    )
    problem = None
    try:
        check_options(options)
    except SegmentsError as err:
        problem = str(err)
    if problem is None and (bad := id_problem(f"{opts.prefix}{opts.k}")):
        problem = f"--prefix {opts.prefix!r} makes segment names that are not valid: {bad}"
    if problem is None and opts.merge is not None and opts.out is None:
        problem = "--merge needs --out (the file to write the merged catalog to)"
    if problem is not None:
        print_lines([f"error: {problem}"], stderr=True)
        return 2
    with open_redis(opts) as (client, keys):
        try:
            found = suggest(client, keys, options)
        except SegmentsError as err:
            print_lines([f"error: {err}"], stderr=True)
            return 1
        if opts.out is not None and (code := _write(opts, found, client, keys)):
            return code
    if opts.json:
        print(json.dumps(found.to_json(), indent=2))
    else:
        _print(found)
    return 0


def _write(opts: argparse.Namespace, found: Suggestion, client: redis.Redis, keys: Keys) -> int:
    """Write the block (or the merged catalog) to --out; a merged catalog only if it validates."""
    from server.catalog.compiler import parse_catalog
    from server.catalog.spec import CatalogInvalid
    from server.segments.block import merged_catalog, segments_yaml
    from server.segments.load import SegmentsError
    from server.state.catalog_store import current_schema

    if opts.merge is None:
        opts.out.write_text(segments_yaml(found))
        return 0
    try:
        text = merged_catalog(opts.merge.read_text(), found)
    except (OSError, SegmentsError) as err:
        print_lines([f"error: {opts.merge}: {err}"], stderr=True)
        return 1
    schema = current_schema(client, keys)
    assert schema is not None  # suggest() loaded customers under it
    try:
        parse_catalog(text, schema)
    except CatalogInvalid as err:
        err_console.print(err.format_all(str(opts.out)), highlight=False, markup=False)
        print_lines([f"error: the merged catalog does not validate; {opts.out} not written"], stderr=True)
        return 1
    opts.out.write_text(text)
    return 0


def _rate(x: float | None) -> str:
    return "not enough data" if x is None else f"{x:.1%}"


def _money(x: float | None) -> str:
    return "not enough data" if x is None else f"{x:,.2f}"


COLUMNS = ("segment", "customers", "precision", "recall", "response rate", "value/decision", "stands out by")
TRAITS_WIDTH = 48  # the descriptive column folds onto more lines; the numbers before it never do


def _row(found: Suggestion, s: Segment) -> list[str]:
    log, o = s.log, found.options
    return [
        s.name,
        f"{s.size:,} ({s.share:.1%})",
        "-" if math.isnan(s.precision) else f"{s.precision:.2f}",
        "-" if math.isnan(s.recall) else f"{s.recall:.2f}",
        "no log" if found.log is None else _rate(log.response_rate(o.min_awards) if log else None),
        "no log" if found.log is None else _money(log.value_per_decision(o.min_awards) if log else None),
        "; ".join(t.text() for t in s.traits),
    ]


def _print_table(rows: list[list[str]]) -> None:
    """Every name and number whole (a number cut to "12…" would be a wrong one): the table is as
    wide as they need, and a narrow terminal wraps its lines."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS[:-1])]
    needed = sum(widths) + 3 * len(COLUMNS) + 1 + TRAITS_WIDTH
    table = Table(show_lines=False)
    for col, width in zip(COLUMNS[:-1], widths, strict=True):
        table.add_column(col, justify="left" if col == "segment" else "right", no_wrap=True, min_width=width)
    table.add_column(COLUMNS[-1], overflow="fold", min_width=TRAITS_WIDTH)
    for row in rows:
        table.add_row(*row)
    Console(file=console.file, width=max(console.width, needed), no_color=console.no_color).print(table)


def _print(found: Suggestion) -> None:
    o = found.options
    sampled = f" (a seeded sample of {found.total:,})" if o.sample is not None else ""
    print_lines(
        [
            f"{found.customers:,} customers{sampled}, feature schema v{found.schema_version}: "
            f"{o.method} k={o.k} seed={o.seed}; rules from a depth-{found.tree_depth} tree (--depth {o.depth})",
            f"fidelity: the rules put {found.accuracy:.1%} of the customers in their own cluster",
        ]
    )
    rows = [_row(found, s) for s in found.segments]
    _print_table(rows)
    lines = ["rules:"] + [f"  {s.name}: {s.rule if s.rule is not None else '(no rule)'}" for s in found.segments]
    if found.imputed:
        imputed = ", ".join(f"{name} ({n:,} missing -> {m:g})" for name, (n, m) in found.imputed.items())
        lines.append(f"missing numeric values were imputed with the feature's median for clustering: {imputed}")
    if found.left_out:
        lines.append(f"left out (the same for every customer): {', '.join(found.left_out)}")
    if found.unreadable:
        lines.append(f"{found.unreadable:,} feature vector(s) of a schema the live one cannot read were left out")
    if found.log is not None:
        lines.append(
            f"log: {found.log.decisions:,} decisions (control group and degraded left out); "
            f"response rate = accepted or converted offers / awards; 'not enough data' below {o.min_awards} awards"
        )
    lines += [f"note: {n}" for n in found.notes]
    print_lines(lines)
