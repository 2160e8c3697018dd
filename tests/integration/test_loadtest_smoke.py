"""A short run of the production load mix (`python -m loadtest.production --smoke`, ~25 s):
a private redis-server, a LightGBM model trained and published, `nbo serve --workers 2
--learner` with a 10-offer catalog (bandit on, budgeted offers), the echo server, 4 h2load
processes of Zipf-drawn customers (web top-1 and call-centre top-3 with explain) and the
outcome reporter, 1 s per step.

Only correctness is asserted, never speed (the machine may be shared): the report is
well-formed, the published model scored the decisions, and every decision was clean -- no
degraded decision, no Redis error, no failed request, and in the verification run the server's
decision counter grew by exactly the requests h2load completed. (The smoke gives the workers'
Redis calls 2 s instead of 250 ms, so a worker starved of CPU by other work is not "unclean".)

h2load comes from the Debian package nghttp2-client, installed with apt-get when we may (root);
only when that is impossible is the test skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _h2load() -> str | None:
    """None when h2load is on PATH (installing it if we may), else why it is not."""
    if shutil.which("h2load"):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "h2load missing and not root or no apt-get: apt-get install nghttp2-client"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nghttp2-client"]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode == 0 and cmd is install and shutil.which("h2load"):
            return None
    return f"apt-get install nghttp2-client failed: {done.stderr[-400:]}"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    why = _h2load()
    if why is not None:
        pytest.skip(why)
    results = tmp_path_factory.mktemp("loadtest") / "production"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.production", "--smoke", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (results / "summary.md").read_text().count("\n| 10 |") == 1
    return json.loads((results / "report.json").read_text())  # type: ignore[no-any-return]


def test_report_is_well_formed(report: dict) -> None:  # type: ignore[type-arg]
    (size,) = report["sizes"]
    assert size["size"] == 10 and size["problems"] == []
    assert size["saturation"]["nbo"] > 0 and size["saturation"]["echo"] > 0
    for run in (size["half"]["nbo"], size["half"]["echo"], size["one"]["nbo"], size["one"]["echo"]):
        assert run["requests"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
    assert [kind for kind in (b["kind"] for b in size["bodies"])] == ["web", "web", "web", "call_centre"]
    assert len([k for k in size["rss_mb"] if k.startswith("worker")]) == 2


def test_the_published_model_scored(report: dict) -> None:  # type: ignore[type-arg]
    (size,) = report["sizes"]
    assert size["model_live"] and size["model_version"]


def test_every_decision_was_clean(report: dict) -> None:  # type: ignore[type-arg]
    (size,) = report["sizes"]
    verify = size["verify"]
    assert verify["h2load"]["succeeded"] == verify["h2load"]["total"] == 4 * 50
    assert verify["server"]["decisions"] == 4 * 50
    assert verify["server"]["degraded"] == 0 and verify["server"]["redis_errors"] == 0
    total = size["server_total"]
    assert total["decisions"] > 0
    assert total["degraded"] == 0 and total["redis_errors"] == 0 and total["log_records_dropped"] == 0
    assert size["outcomes"]["decisions"] > 0 and size["outcomes"]["errors"] == 0
    assert size["outcomes"]["outcomes"] > 0
