"""The `nbo` command as a user runs it: real processes, real Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from server.api.client import NboClient
from server.config import Settings
from tests.unit.catalog_fixtures import BASE

NBO = [sys.executable, "-m", "server.cli"]


def run(
    args: list[str], redis_url: str, cwd: Path, env_vars: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "COLUMNS": "200", **(env_vars or {})}
    return subprocess.run([*NBO, *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


GOOD = """\
customer_id,tier,tenure_months,churn_risk,consent_web,consent_call
vip,A,40,0.1,1,1
regular,B,5,0.2,1,
"""


def test_features_load_get_and_bad_rows_write_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD + "x{1},A,1,0.1,1,1\nok2,A,abc,0.1,1,1\n")
    result = run(["features", "load", str(bad), "--categorical", "tier"], redis_url, tmp_path)
    assert result.returncode == 2
    assert f"{bad}:4: customer_id:" in result.stderr
    assert f'{bad}:5: tenure_months: not a number: "abc"' in result.stderr
    assert "nothing was loaded" in result.stderr
    assert redis_client.dbsize() == 0

    result = run(["features", "load", str(bad), "--categorical", "tier", "--skip-invalid"], redis_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded 2 customers x 5 features" in result.stdout
    rejects = (tmp_path / "bad.csv.rejects").read_text().splitlines()
    assert rejects[0] == "line,errors,customer_id,tier,tenure_months,churn_risk,consent_web,consent_call"
    assert rejects[2] == '5,"tenure_months: not a number: ""abc""",ok2,A,abc,0.1,1,1'
    assert len(rejects) == 3

    result = run(["features", "get", "regular"], redis_url, tmp_path)
    assert result.returncode == 0
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.strip().splitlines())
    assert lines == {
        "tier": "B",
        "tenure_months": "5.0",
        "churn_risk": "0.20000000298023224",
        "consent_web": "1.0",
        "consent_call": "(missing)",
    }
    assert run(["features", "get", "nobody"], redis_url, tmp_path).returncode == 1


def test_catalog_validate_and_load(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    customers = tmp_path / "c.csv"
    customers.write_text(GOOD)
    bad = tmp_path / "catalog.yaml"
    bad.write_text(BASE.replace("channels: [web]\n    channel_weight", "channels: [fax]\n    channel_weight"))
    result = run(
        ["catalog", "validate", str(bad), "--features", str(customers), "--categorical", "tier"], redis_url, tmp_path
    )
    assert result.returncode == 1
    assert f'{bad}:49:16: offers[2].channels[0]: unknown channel "fax"' in result.stderr

    assert run(["catalog", "load", str(bad)], redis_url, tmp_path).returncode == 2  # no schema yet
    assert run(["features", "load", str(customers), "--categorical", "tier"], redis_url, tmp_path).returncode == 0
    result = run(["catalog", "load", str(bad)], redis_url, tmp_path)
    assert result.returncode == 1 and "nothing was published" in result.stderr
    assert redis_client.get("nbo:{g}:catalog:current") is None

    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    result = run(["catalog", "load", str(good)], redis_url, tmp_path)
    assert result.returncode == 0 and "catalog 1-" in result.stdout
    assert "unchanged" in run(["catalog", "load", str(good)], redis_url, tmp_path).stdout
    assert run(["catalog", "validate", str(good)], redis_url, tmp_path).returncode == 0


def test_serve_with_two_workers_answers_and_stops_cleanly_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    customers = tmp_path / "c.csv"
    customers.write_text(GOOD)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(BASE)
    assert run(["features", "load", str(customers), "--categorical", "tier"], redis_url, tmp_path).returncode == 0
    env = {**os.environ, "REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [*NBO, "serve", "--workers", "2", "--port", "0", "--catalog", str(catalog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        match = re.search(r"serving on (\S+) with 2 worker", banner)
        assert match, banner
        client = NboClient(match.group(1))
        deadline = time.monotonic() + 30
        while True:
            try:
                response = client.decide("vip", "call_centre")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert [o.offer_id for o in response.offers] == ["o_adhoc"]
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_runs_end_to_end_and_exits_0(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "COLUMNS": "200"}
    result = subprocess.run(
        [*NBO, "demo", "--customers", "2000", "--workers", "1", "--port", "0"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2000 synthetic customers x 15 features" in out
    assert "#1 " in out and "Say:" in out  # at least one ranked offer with talking points
    for reason in ("OPTED_OUT", "CONTROL_GROUP", "UNKNOWN_CUSTOMER"):
        assert f"Send nothing: {reason}" in out
    assert "recorded=True; the same report again: duplicate=True" in out
    # the demo keeps to its own key prefix in a shared Redis
    assert redis_client.exists("nbo-demo:{g}:catalog:current") and not redis_client.exists("nbo:{g}:catalog:current")


def test_train_and_model_commands_are_reachable(redis_url: str, tmp_path: Path) -> None:
    result = run(["train", "--help"], redis_url, tmp_path)
    assert result.returncode == 0 and "--data" in result.stdout
    result = run(["train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")], redis_url, tmp_path)
    assert result.returncode == 2 and "missing.csv" in result.stderr
    result = run(["model", "list"], redis_url, tmp_path)
    assert result.returncode == 0 and "no model published" in result.stdout
    result = run(["model", "publish", str(tmp_path)], redis_url, tmp_path)
    assert result.returncode == 1 and "missing model.txt" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_serve_refuses_a_non_loopback_address_without_tls_and_auth(redis_url: str, tmp_path: Path, host: str) -> None:
    res = run(["serve", "--host", host, "--port", "0", "--workers", "1"], redis_url, tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: binding {host} (not loopback) without TLS and authentication:")
    assert "--insecure" in res.stderr


@pytest.mark.parametrize(
    ("host", "tls", "auth", "missing"),
    [
        ("127.0.0.1", False, False, None),
        ("localhost", False, False, None),
        ("[::1]", False, False, None),
        ("0.0.0.0", False, False, "TLS and authentication"),
        ("0.0.0.0", True, False, "authentication"),
        ("0.0.0.0", False, True, "TLS"),
        ("0.0.0.0", True, True, None),
        ("nbo.example.com", False, True, "TLS"),
    ],
)
def test_what_an_exposed_server_lacks(
    certs: Any, tmp_path: Path, host: str, tls: bool, auth: bool, missing: str | None
) -> None:
    fields: dict[str, Any] = {"host": host}
    if tls:
        fields |= {"tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    if auth:
        (tmp_path / "tokens").write_text("")
        fields["auth_tokens_file"] = tmp_path / "tokens"
    assert Settings(**fields).exposed_unprotected == missing
