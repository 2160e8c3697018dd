"""The production load mix (issue 12): what production runs, measured beside the echo baseline.

    .venv/bin/python -m loadtest.production            # = make loadtest-production, ~5 minutes
    .venv/bin/python -m loadtest.production --smoke    # a few seconds per step (tests/integration)

A private redis-server; `make_population(customers, seed)` loaded as features; a synthetic log
(make_log.py) over the largest catalog, `nbo train`, `nbo model publish` (so every worker scores
with LightGBM, compiled with lleaves); then for each catalog size (make_catalog.py --production:
bandit on, every 5th offer with total and daily budgets no run exhausts) `nbo serve --workers W
--learner` with that catalog, next to the echo server (echo_server.py) started once. Per size:

1. readiness: a real Decide must name the published model version (the model is live);
2. verification: every h2load process sends a fixed number of requests (no outcome reporter,
   no warm-up); the server's decision counter must grow by exactly that many, none degraded,
   no Redis error, no failed request;
3. the outcome reporter (outcomes.py) starts: its own decisions at a low rate, an outcome for
   every offer they return; it runs through steps 4-6;
4. saturation: the mix (h2mix.py: one h2load process per Zipf-drawn customer and kind,
   1 connection each) at each level of streams per connection, NBO then echo;
5. 50 % of saturation, open loop (h2load --rps per connection): NBO and echo at the same rate;
6. 1 request in flight (one web process, -c 1 -m 1), NBO and echo;
7. worker RSS (/proc/PID/status VmRSS), counters over the whole size, stop.

Writes loadtest/results/production/{summary.md,report.json} and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest import h2mix  # noqa: E402
from loadtest.check import _children, cpu_snapshot, snapshot  # noqa: E402
from loadtest.faults.env import consecutive_free_ports as free_port  # noqa: E402
from loadtest.production_report import clean_counts, write_report  # noqa: E402
from server.app import worker_metrics_port  # noqa: E402

BIN = Path(sys.executable).parent
LT = ROOT / "loadtest"


class Procs:
    """Child processes stopped in reverse order on exit (SIGTERM, then SIGKILL after 15 s)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def nbo(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "nbo"), *args], env=env, check=True, cwd=ROOT)


def wait_model(target: str, customer: str, timeout: float) -> Any:
    """Decide until the response names a model version (workers load it in the background)."""
    import grpc

    from server.api.client import NboClient

    client, deadline, resp = NboClient(target, timeout=2.0), time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            try:
                resp = client.decide(customer, "web", max_offers=1)
                if resp.model_version:
                    return resp
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            time.sleep(0.2)
    finally:
        client.close()
    raise SystemExit(f"no model version in Decide after {timeout:.0f} s (last response: {resp})")


def setup(opts: argparse.Namespace, work: Path, env: dict[str, str]) -> tuple[list[Path], str]:
    """Features, catalogs, the trained and published model. Returns the catalogs and the model version."""
    from training.population import make_population

    make_population(opts.customers, seed=opts.seed).write_csv(str(work / "customers.csv"))
    nbo(["features", "load", str(work / "customers.csv"), "--categorical", "tier,preferred_channel"], env)
    catalogs = []
    for size in opts.sizes:
        path = opts.results / f"catalog_{size}.yaml"
        subprocess.run(
            [sys.executable, str(LT / "make_catalog.py"), "--out", str(path), "--offers", str(size), "--production"],
            check=True,
        )
        catalogs.append(path)
    biggest = catalogs[opts.sizes.index(max(opts.sizes))]
    log = work / "log.parquet"
    subprocess.run(
        [
            sys.executable,
            str(LT / "make_log.py"),
            "--catalog",
            str(biggest),
            "--customers",
            str(opts.customers),
            "--rows",
            str(opts.log_rows),
            "--seed",
            str(opts.seed),
            "--out",
            str(log),
        ],
        check=True,
    )
    model = work / "model"
    nbo(["train", "--data", str(log), "--catalog", str(biggest), "--out", str(model), "--quiet",
         "--features", str(work / "customers.csv"), "--categorical", "tier,preferred_channel"], env)  # fmt: skip
    nbo(["model", "publish", str(model)], env)
    version = json.loads((model / "metadata.json").read_text())["version"]
    return catalogs, str(version)


def _listening_inodes(ports: list[int]) -> set[str]:
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) in ports:
            inodes.add(f[9])
    return inodes


def _is_worker(child: int, inodes: set[str]) -> bool:
    try:
        socks = {os.readlink(fd).removeprefix("socket:[").rstrip("]") for fd in Path(f"/proc/{child}/fd").iterdir()}
    except OSError:
        return False
    return bool(socks & inodes)


def rss_mb(pid: int, metrics_ports: list[int]) -> dict[str, float]:
    """VmRSS of each child of `nbo serve`: a worker is the child listening on a metrics port."""
    inodes, out = _listening_inodes(metrics_ports), {}
    for child in sorted(_children(pid)):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        name = f"worker {child}" if _is_worker(child, inodes) else f"other {child}"
        out[name] = round(rss / 1024, 1)
    return out


def redis_memory(url: str) -> dict[str, float]:
    """Redis's used memory, key count and decision-stream length (customers, history, log)."""
    import redis

    from server.config import Settings
    from server.state.keys import Keys

    client = redis.Redis.from_url(url)
    try:
        used = client.info("memory")["used_memory"]
        stream_key = Keys(Settings().key_prefix).decision_stream
        stream = client.xlen(stream_key) if client.exists(stream_key) else 0
        return {"used_mb": used / 2**20, "keys": client.dbsize(), "stream_entries": stream}
    finally:
        client.close()


def profile_workers(opts: argparse.Namespace, size: int, pid: int, metrics_ports: list[int], nbo_run: Any) -> None:
    """py-spy on every worker during an extra, unmeasured saturation run (the sampler slows the
    worker, so its throughput is not reported); raw stacks and profile_top.py's summary per worker."""
    inodes = _listening_inodes(metrics_ports)
    workers = [c for c in sorted(_children(pid)) if _is_worker(c, inodes)]
    spies = []
    for w in workers:
        raw = opts.results / f"profile_{size}_{w}.txt"
        cmd = [str(BIN / "py-spy"), "record", "-p", str(w), "-d", str(int(opts.duration)), "-r", "100"]
        spies.append((raw, subprocess.Popen([*cmd, "-f", "raw", "-o", str(raw), "--native"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))  # fmt: skip
    nbo_run("profile", streams=max(opts.streams), duration=opts.duration, warmup=0.0)
    for raw, spy in spies:
        spy.wait()
        if raw.exists():
            top = subprocess.run([sys.executable, str(LT / "profile_top.py"), str(raw), "--top", "40"],
                                 capture_output=True, text=True, check=False).stdout  # fmt: skip
            raw.with_name(raw.stem + "_top.txt").write_text(top)


def cores(c0: dict[str, Any], c1: dict[str, Any], generator_s: float) -> dict[str, float]:
    """Cores used during a step: by label, by h2load, and `foreign` (the rest of the machine's
    busy time: other work on a shared box)."""
    secs = c1["t"] - c0["t"]
    hz = c1["hz"]
    out = {k: (c1["procs"][k] - c0["procs"][k]) / hz / secs for k in c1["procs"]}
    busy = sum(c1["stat"][k] - c0["stat"][k] for k in c1["stat"] if k not in ("idle", "iowait")) / hz / secs
    out["h2load"] = generator_s / secs
    out["foreign"] = max(0.0, busy - sum(out.values()))
    return {k: round(v, 2) for k, v in out.items()}


def measure_size(
    opts: argparse.Namespace, size: int, catalog: Path, ctx: dict[str, Any], procs: Procs
) -> dict[str, Any]:
    runs = opts.results / "runs"
    # the supervisor's endpoint on mport, worker i's own on mport + 1 + i
    port, mport = free_port(1), free_port(opts.workers + 1)
    own = [worker_metrics_port(mport, i) for i in range(opts.workers)]
    urls = [f"http://127.0.0.1:{p}/" for p in own]
    serve = f"serve --workers {opts.workers} --port {port} --metrics-port {mport} --learner --log-level WARNING"
    server = procs.start(
        [str(BIN / "nbo"), *serve.split(), "--catalog", str(catalog)],
        opts.results / f"nbo-serve-{size}.log",
        ctx["env"],
    )
    first = wait_model(f"127.0.0.1:{port}", ctx["bodies"][0].customer, opts.ready_timeout)
    while any("error" in w for w in snapshot(urls)["workers"]):  # type: ignore[union-attr]
        time.sleep(0.2)
    out: dict[str, Any] = {"size": size, "model_version": first.model_version}
    out["model_live"] = first.model_version == ctx["model_version"]
    bodies, echo = ctx["bodies"], ctx["echo_port"]
    labels = [f"nbo={server.pid}+", f"redis={ctx['redis_pid']}", f"echo={ctx['echo_pid']}+"]

    def nbo_run(name: str, **kw: Any) -> dict[str, Any]:
        m0, c0 = snapshot(urls)["total"], cpu_snapshot(labels)
        res = h2mix.run(kw.pop("bodies", bodies), port, runs / f"{size}_{name}_nbo", **kw)
        res["server"] = clean_counts(m0, snapshot(urls)["total"])  # type: ignore[arg-type]
        res["cores"] = cores(c0, cpu_snapshot(labels), res["generator_cpu_s"])
        return res

    def echo_run(name: str, **kw: Any) -> dict[str, Any]:
        return h2mix.run(kw.pop("bodies", bodies), echo, runs / f"{size}_{name}_echo", **kw)

    out["verify"] = nbo_run("verify", streams=2, requests=opts.verify_n)
    stats = opts.results / f"outcomes-{size}.json"
    flags = f"--target 127.0.0.1:{port} --rate {opts.outcome_rate}".split()
    reporter = procs.start(
        [
            sys.executable,
            str(LT / "outcomes.py"),
            *flags,
            "--customers",
            str(ctx["customers_file"]),
            "--out",
            str(stats),
        ],
        opts.results / f"outcomes-{size}.log",
    )
    m_all = snapshot(urls)["total"]
    out.update(load_steps(opts, bodies, nbo_run, echo_run))
    procs.stop(reporter)
    if opts.profile:
        profile_workers(opts, size, server.pid, own, nbo_run)
    out["outcomes"] = json.loads(stats.read_text())
    out["server_total"] = clean_counts(m_all, snapshot(urls)["total"])  # type: ignore[arg-type]
    out["rss_mb"] = rss_mb(server.pid, own)
    out["redis"] = redis_memory(ctx["env"]["REDIS_URL"])
    procs.stop(server)
    return out


def load_steps(opts: argparse.Namespace, bodies: list[h2mix.Body], nbo_run: Any, echo_run: Any) -> dict[str, Any]:
    """Saturation (each level of streams, NBO then echo), 50 % of it open loop, 1 in flight."""
    timing = {"duration": opts.duration, "warmup": opts.warmup}
    out: dict[str, Any] = {"levels": []}
    for m in opts.streams:
        n, e = nbo_run(f"sat_m{m}", streams=m, **timing), echo_run(f"sat_m{m}", streams=m, **timing)
        out["levels"].append({"streams": m, "nbo": n, "echo": e})
    clean = [lv for lv in out["levels"] if lv["nbo"]["server"]["clean"] and lv["nbo"].get("rps")]
    best = max(clean or out["levels"], key=lambda lv: lv["nbo"].get("rps") or 0)
    out["saturation"] = {"streams": best["streams"], "nbo": best["nbo"].get("rps") or 0.0}
    out["saturation"]["echo"] = max(lv["echo"].get("rps") or 0.0 for lv in out["levels"])
    rate = max(1.0, round(0.5 * out["saturation"]["nbo"] / len(bodies)))
    half = {"streams": max(opts.streams), "rps": rate, **timing}
    out["half"] = {"rps_per_connection": rate, "nbo": nbo_run("half", **half), "echo": echo_run("half", **half)}
    one = {"bodies": [bodies[0]], "streams": 1, **timing}
    out["one"] = {"nbo": nbo_run("one", **one), "echo": echo_run("one", **one)}
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny and short: catalog 10, 1 level, 2 s runs")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 500])
    p.add_argument("--customers", type=int, default=10000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--processes", type=int, default=16, help="h2load processes (= connections, = Zipf draws)")
    p.add_argument("--zipf", type=float, default=1.1, help="exponent s of the customer mix")
    p.add_argument("--call-centre-every", type=int, default=4, help="every Nth process is call-centre top-3")
    p.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--verify-n", type=int, default=200, help="requests per h2load process in the verification")
    p.add_argument("--outcome-rate", type=float, default=10.0, help="reporter decisions per second")
    p.add_argument("--log-rows", type=int, default=20000)
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--profile", action="store_true", help="py-spy every worker in an extra, unmeasured run per size")
    p.add_argument("--results", type=Path, default=LT / "results" / "production")
    opts = p.parse_args(argv)
    if opts.smoke:
        opts.sizes, opts.customers, opts.processes, opts.streams = [10], 500, 4, [2]
        opts.duration, opts.warmup, opts.verify_n, opts.log_rows = 1.0, 0.0, 50, 2000
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    if not shutil.which("h2load"):
        print("h2load not found: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    shutil.rmtree(opts.results, ignore_errors=True)
    (opts.results / "runs").mkdir(parents=True)
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="nbo-production-") as tmp:
        work = Path(tmp)
        try:
            return run_all(opts, work, procs)
        finally:
            procs.stop_all()


def start_redis(work: Path, procs: Procs) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server (no persistence) on a free port, once it answers PING."""
    import redis

    binary = BIN / "redis-server"
    port = free_port(1)
    args = f"--port {port} --bind 127.0.0.1 --appendonly no --dir {work}".split()
    proc = procs.start([str(binary if binary.exists() else "redis-server"), *args, "--save", ""], work / "redis.log")
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    client.close()
    return proc, port


def run_all(opts: argparse.Namespace, work: Path, procs: Procs) -> int:
    redis_proc, redis_port = start_redis(work, procs)
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    if opts.smoke:
        # The smoke checks correctness on a machine `make test` shares with other work: a worker
        # starved of CPU for 250 ms (the default Redis time budget) would degrade a decision
        # without anything being wrong. The measured runs keep the default.
        env["NBO_REDIS_TIMEOUT_SECONDS"] = "2.0"
    catalogs, version = setup(opts, work, env)
    pool = h2mix.eligible_customers(opts.customers, opts.seed, catalogs[0])
    drawn = h2mix.zipf_draw(pool, opts.processes, opts.zipf, opts.seed)
    bodies = h2mix.write_bodies(drawn, opts.call_centre_every, opts.results / "bodies")
    (opts.results / "mix.tsv").write_text("".join(f"{b.customer}\t{b.kind}\n" for b in bodies))
    # The reporter's customers: its own Zipf draws over the customers h2load does not send.
    # Declines put an offer into a 30-day cooldown for that customer; reported for the few
    # customers h2load repeats thousands of times a second, they would soon leave those
    # customers no offer at all, which no real customer sees.
    rest = [c for c in pool if c not in set(drawn)]
    every = opts.call_centre_every
    customers_file = opts.results / "reporter.tsv"
    customers_file.write_text(
        "".join(
            f"{c}\t{'call_centre' if (i + 1) % every == 0 else 'web'}\n"
            for i, c in enumerate(h2mix.zipf_draw(rest, 2000, opts.zipf, opts.seed + 1))
        )
    )
    echo_port = free_port(1)
    echo_proc = procs.start(
        [sys.executable, str(LT / "echo_server.py"), "--port", str(echo_port), "--workers", str(opts.workers)],
        opts.results / "echo-server.log",
    )
    wait_port(echo_port)
    ctx = {"env": env, "bodies": bodies, "echo_port": echo_port, "model_version": version}
    ctx.update(customers_file=customers_file, redis_pid=redis_proc.pid, echo_pid=echo_proc.pid)
    sizes = [measure_size(opts, size, cat, ctx, procs) for size, cat in zip(opts.sizes, catalogs, strict=True)]
    ok = write_report(opts, sizes, bodies, len(pool))
    print((opts.results / "summary.md").read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
