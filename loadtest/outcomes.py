"""Outcome reporter of the production load mix: makes its own decisions at a low, fixed rate
beside h2load and reports an outcome for every offer they return, so the outcome path, the
learner and the contact-policy reads (decline cooldowns) carry real data during the run.

h2load cannot read responses, so it cannot report outcomes for its own decisions; this process
does it for its share instead. Customers are drawn from the same Zipf mix as the h2load bodies,
web top-1 and call-centre top-3-with-explain in the same ratio. Every offer returned gets
ACCEPTED with probability `accept`, else DECLINED (seeded). Runs until SIGTERM, then writes
its tallies as JSON to --out.

    outcomes.py --target 127.0.0.1:P --customers customers.txt --rate 10 --out stats.json
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from loadtest.make_body import DEFAULT_CONTEXT, DEFAULT_EVENTS
from server.api.client import NboClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--customers", type=Path, required=True, help="one 'customer_id<TAB>kind' per line")
    parser.add_argument("--rate", type=float, default=10.0, help="decisions per second")
    parser.add_argument("--accept", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args()
    draws = [line.split("\t") for line in opts.customers.read_text().split("\n") if line]
    rng = random.Random(opts.seed)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    tally = {"decisions": 0, "offers": 0, "outcomes": 0, "degraded": 0, "errors": 0, "accepted": 0}
    client = NboClient(opts.target, timeout=5.0)
    period, next_at = 1.0 / opts.rate, time.monotonic()
    while not stop:
        customer, kind = rng.choice(draws)
        web = kind == "web"
        try:
            resp = client.decide(
                customer, "web" if web else "call_centre", max_offers=1 if web else 3, explain=not web,
                context=DEFAULT_CONTEXT if web else {}, events=DEFAULT_EVENTS if web else (),
                placement="home_hero" if web else "",
            )  # fmt: skip
            tally["decisions"] += 1
            tally["degraded"] += int(resp.degraded)
            for offer in resp.offers:
                tally["offers"] += 1
                accepted = rng.random() < opts.accept
                client.report(resp.decision_id, offer.offer_id, "accepted" if accepted else "declined")
                tally["outcomes"] += 1
                tally["accepted"] += int(accepted)
        except grpc.RpcError as err:
            tally["errors"] += 1
            print(f"outcomes.py: {err.code().name}: {err.details()}", file=sys.stderr)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    client.close()
    opts.out.write_text(json.dumps(tally))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
