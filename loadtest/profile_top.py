"""Summarise a py-spy raw (collapsed-stack) profile of one server worker.

    py-spy record -p PID -d 10 -r 100 -f raw -o prof.txt --native
    profile_top.py prof.txt [--top 30]

Prints where the worker's samples went by coarse category (idle, the decision pipeline, the
decision-log writer, gRPC's completion-queue thread, garbage collection, the rest of the event
loop = gRPC core / uvloop / protobuf in C), then the functions with the most samples, inclusive
(anywhere on the stack) and self (top of the stack). Works with or without --native; without
it, C time (and waiting) shows up as the innermost Python frame, e.g. `Runner.run`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "select (selectors.py", "poll (libc")
IDLE_ANYWHERE = ("PyThread_acquire_lock_timed", "_queue_SimpleQueue_get_impl", "pthread_cond_timedwait")

BOILERPLATE = ("<module>", "run (asyncio/runners.py", "Runner.run (asyncio/runners.py", "worker_main (")

CATEGORIES = (  # first match wins
    ("decision pipeline (DecisionService.decide)", "DecisionService.decide"),
    ("decision-log writer (LogWriter._run)", "LogWriter._run"),
    ("catalog reloader", "CatalogReloader"),
    ("garbage collection", "gc_collect_main"),
    ("other threads (gRPC completion queue, ...)", "Thread.run"),
    ("event loop, gRPC core, protobuf (C)", ""),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    opts = parser.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = idle = 0
    for line in opts.profile.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES) or any(m in stack for m in IDLE_ANYWHERE):
            idle += n
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            if ".py:" in f and not f.startswith(BOILERPLATE) and "multiprocessing/" not in f:
                inclusive[f] += n
        for name, marker in CATEGORIES:
            if marker in stack:
                cats[name] += n
                break
    print(f"{total + idle} samples: {idle} idle (waiting), {total} busy; shares below are of busy samples")
    print("\n-- by category --")
    for name, _marker in CATEGORIES:
        print(f"{100 * cats[name] / max(total, 1):5.1f}%  {name}")
    print(f"\n-- inclusive, Python frames (top {opts.top}) --")
    for f, n in inclusive.most_common(opts.top):
        print(f"{100 * n / max(total, 1):5.1f}%  {f}")
    print(f"\n-- self (top {opts.top}) --")
    for f, n in own.most_common(opts.top):
        print(f"{100 * n / max(total, 1):5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
