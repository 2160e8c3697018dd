"""`nbo tokens` and a tokens file at `nbo serve`'s start, as a user runs them."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from tests.integration.test_cli import run


def test_add_prints_the_token_once_and_keeps_only_its_hash(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    added = run(["tokens", "add", "web-shop", "--roles", "decide", "--file", str(path)], redis_url, tmp_path)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert re.fullmatch(r"nbo_[A-Za-z0-9_-]{43}", token)
    assert "shown once" in added.stderr and token not in added.stderr
    text = path.read_text()
    assert token not in text
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(rf"web-shop decide {digest}  # added \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n", text)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    env_file = {"NBO_AUTH_TOKENS_FILE": str(path)}
    second = run(["tokens", "add", "crm", "--roles", "report,decide"], redis_url, tmp_path, env_file)
    assert second.returncode == 0, second.stderr
    listed = run(["tokens", "list", "--file", str(path)], redis_url, tmp_path)
    assert listed.stdout.splitlines() == [
        f"web-shop  decide  {digest[:8]}",
        f"crm  decide,report  {hashlib.sha256(second.stdout.strip().encode()).hexdigest()[:8]}",
    ]
    assert token not in listed.stdout

    revoked = run(["tokens", "revoke", "web-shop", "--file", str(path)], redis_url, tmp_path)
    assert revoked.returncode == 0 and "revoked 1 token(s) of 'web-shop'" in revoked.stderr
    assert [line.split()[0] for line in path.read_text().splitlines()] == ["crm"]
    assert run(["tokens", "revoke", "web-shop", "--file", str(path)], redis_url, tmp_path).returncode == 1


def test_bad_names_roles_and_files_are_refused(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    bad_role = run(["tokens", "add", "shop", "--roles", "decide,owner", "--file", str(path)], redis_url, tmp_path)
    assert bad_role.returncode == 2
    assert "--roles: unknown role 'owner'; roles are decide, report, admin" in bad_role.stderr
    assert not path.exists()
    assert run(["tokens", "add", "a b", "--roles", "decide", "--file", str(path)], redis_url, tmp_path).returncode == 2
    assert "no tokens file" in run(["tokens", "list"], redis_url, tmp_path).stderr

    path.write_text(f"shop decide {'0' * 64}\nshop2 decide,admn {'1' * 64}\n")
    refused = run(["tokens", "add", "x", "--roles", "decide", "--file", str(path)], redis_url, tmp_path)
    assert refused.returncode == 2
    assert f"{path}:2:7: unknown role 'admn'" in refused.stderr
    served = run(["serve", "--port", "0", "--workers", "1"], redis_url, tmp_path, {"NBO_AUTH_TOKENS_FILE": str(path)})
    assert served.returncode == 2
    assert f"error: {path}:2:7: unknown role 'admn'; roles are decide, report, admin" in served.stderr

    path.write_text(f"shop decide,report {'0' * 64}\n")
    demo = run(["demo", "--port", "0"], redis_url, tmp_path, {"NBO_AUTH_TOKENS_FILE": str(path), "NBO_TOKEN": ""})
    assert demo.returncode == 2
    assert "give --token (or NBO_TOKEN)" in " ".join(demo.stderr.split())
