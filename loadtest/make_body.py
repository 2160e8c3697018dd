"""Write h2load request bodies for the gRPC unary call nbo.v1.Decisioning/Decide.

A gRPC message on the wire (HTTP/2 DATA) is a 5-byte prefix -- one flag byte (0 = not
compressed) and the message length as a 4-byte big-endian integer -- followed by the serialised
protobuf. h2load sends the file given with -d as the body of every request, so one body file
means one customer for the whole run.

    # one customer
    make_body.py --customer C0000042 --out body.bin
    # K customers that will get offers (web consent, outside the catalog's control group),
    # one body per customer in DIR (run one h2load per body to spread the load over customers)
    make_body.py --pick 4 --population 10000 --seed 7 --catalog catalog.yaml --out-dir DIR
    # show what a body holds
    make_body.py --decode body.bin

The request: channel WEB, max_offers 1, context cart_value=95 and page_depth=4, events
cart_view and login_after_absence, placement home_hero (change with the flags).
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.gen.nbo.v1 import decisioning_pb2 as pb

CHANNELS = {"call_centre": pb.CALL_CENTRE, "web": pb.WEB, "mobile_app": pb.MOBILE_APP, "email": pb.EMAIL}
DEFAULT_CONTEXT = {"cart_value": 95.0, "page_depth": 4.0}
DEFAULT_EVENTS = ["cart_view", "login_after_absence"]


def frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: flag 0 (uncompressed) + 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(data: bytes) -> bytes:
    flag, length = struct.unpack(">BI", data[:5])
    if flag != 0 or length != len(data) - 5:
        raise ValueError(f"not one uncompressed gRPC message (flag {flag}, length {length}, {len(data) - 5} bytes)")
    return data[5:]


def request(
    customer_id: str,
    *,
    channel: str = "web",
    max_offers: int = 1,
    context: dict[str, float] | None = None,
    events: list[str] | None = None,
    placement: str = "home_hero",
) -> Any:
    return pb.DecideRequest(
        customer_id=customer_id,
        channel=CHANNELS[channel],
        max_offers=max_offers,
        context=DEFAULT_CONTEXT if context is None else context,
        events=DEFAULT_EVENTS if events is None else events,
        placement=placement,
    )


def pick_customers(k: int, population: int, seed: int, catalog: Path | None, channel: str) -> list[str]:
    """K customers of make_population(population, seed) with consent on the channel and outside
    the catalog's universal control group, spread over the population."""
    import yaml

    from server.pipeline.control_groups import in_holdout
    from training.population import make_population

    salt, fraction, consent_col = "nbo", 0.0, None
    if catalog is not None:
        spec = yaml.safe_load(catalog.read_text())
        cg = spec.get("control_group") or {}
        salt, fraction = cg.get("salt", "nbo"), float(cg.get("fraction", 0.0))
        consent_col = (spec.get("consent") or {}).get(channel)
    pop = make_population(population, seed=seed)
    step = max(population // max(k, 1), 1)
    chosen: list[str] = []
    for start in range(0, population, step):
        for i in range(start, population):
            cid = pop.customer_ids[i]
            if consent_col is not None and float(pop.columns[consent_col][i]) != 1.0:  # type: ignore[arg-type]
                continue
            if in_holdout(salt, cid, fraction) or cid in chosen:
                continue
            chosen.append(cid)
            break
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise SystemExit(f"only {len(chosen)} suitable customers found, wanted {k}")
    return chosen


def _context(items: list[str]) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer", action="append", help="customer id (repeat for several)")
    who.add_argument("--pick", type=int, metavar="K", help="pick K customers from the synthetic population")
    who.add_argument("--decode", type=Path, metavar="BODY", help="print the request held in a body file")
    parser.add_argument("--population", type=int, default=10_000, help="with --pick: population size")
    parser.add_argument("--seed", type=int, default=7, help="with --pick: population seed")
    parser.add_argument("--catalog", type=Path, help="with --pick: avoid its control group, need its consent")
    parser.add_argument("--out", type=Path, help="body file (one customer)")
    parser.add_argument("--out-dir", type=Path, help="one body-<customer>.bin per customer")
    parser.add_argument("--channel", default="web", choices=sorted(CHANNELS))
    parser.add_argument("--max-offers", type=int, default=1)
    parser.add_argument("--context", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--event", action="append", default=None)
    parser.add_argument("--placement", default="home_hero")
    opts = parser.parse_args()

    if opts.decode is not None:
        msg = pb.DecideRequest.FromString(unframe(opts.decode.read_bytes()))
        print(msg, end="")
        return 0
    customers = opts.customer or pick_customers(opts.pick, opts.population, opts.seed, opts.catalog, opts.channel)
    if opts.out is None and opts.out_dir is None:
        parser.error("give --out or --out-dir")
    if opts.out is not None and len(customers) != 1:
        parser.error("--out takes one customer; use --out-dir for several")
    ctx = _context(opts.context)
    for cid in customers:
        body = frame(
            request(
                cid,
                channel=opts.channel,
                max_offers=opts.max_offers,
                context=ctx,
                events=opts.event,
                placement=opts.placement,
            ).SerializeToString()
        )
        if opts.out is not None:
            path = opts.out
        else:
            opts.out_dir.mkdir(parents=True, exist_ok=True)
            path = opts.out_dir / f"body-{cid}.bin"
        path.write_bytes(body)
        print(f"{cid}\t{path}\t{len(body)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
