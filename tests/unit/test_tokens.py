"""The tokens file: what it accepts, and the exact message (file:line:column) for what it does not."""

from __future__ import annotations

import pytest

from server.api.auth import Authenticator, PermissionDenied, Unauthenticated
from server.api.tokens import TokenFileError, format_line, new_token, parse_tokens, token_digest

HASH = "a" * 64
OTHER = "b" * 64


def test_entries_comments_and_blank_lines() -> None:
    text = f"# callers\n\nweb-shop decide {HASH}  # added today\n  crm  report,decide  {OTHER}\n"
    entries = parse_tokens(text, "t.txt")
    assert [(e.name, sorted(e.roles), e.digest.hex()) for e in entries] == [
        ("web-shop", ["decide"], HASH),
        ("crm", ["decide", "report"], OTHER),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("web decide", "t.txt:2:1: expected '<client name> <roles> <sha256 hex>', got 2 field(s)"),
        (
            f"@web decide {HASH}",
            "t.txt:2:1: client name '@web': 1-64 letters, digits and _ . @ -, starting with a letter or digit",
        ),
        (f"web  decide,admn {HASH}", "t.txt:2:6: unknown role 'admn'; roles are decide, report, admin"),
        (f"web decide, {HASH}", "t.txt:2:5: unknown role ''; roles are decide, report, admin"),
        (
            "web decide nbo_notahash",
            "t.txt:2:12: expected the token's SHA-256 as 64 lowercase hex digits (never the token)",
        ),
        (
            f"web decide {HASH.upper()}",
            "t.txt:2:12: expected the token's SHA-256 as 64 lowercase hex digits (never the token)",
        ),
        (f"web2 report {HASH}", "t.txt:2:13: the same token hash as line 1"),
    ],
)
def test_bad_lines_are_refused_with_file_line_and_column(line: str, message: str) -> None:
    with pytest.raises(TokenFileError) as info:
        parse_tokens(f"first decide {HASH}\n{line}\n", "t.txt")
    assert str(info.value) == message


def test_a_token_is_checked_by_its_hash_and_the_role_of_its_client() -> None:
    token, other = new_token(), new_token()
    assert token.startswith("nbo_") and len(token) == 47 and token != other
    text = format_line("shop", frozenset({"decide"}), token_digest(token))
    assert text == f"shop decide {token_digest(token).hex()}"
    auth = Authenticator(parse_tokens(text, "t"))
    caller = auth.check("Decide", f"Bearer {token}")
    assert (caller.name, caller.roles, caller.anonymous) == ("shop", frozenset({"decide"}), False)
    assert auth.check("Decide", f"bearer   {token} ").name == "shop"  # the scheme is case-insensitive
    with pytest.raises(PermissionDenied):
        auth.check("ReportOutcome", f"Bearer {token}")
    with pytest.raises(PermissionDenied):
        auth.check("ServerReflectionInfo", f"Bearer {token}")
    with pytest.raises(Unauthenticated, match="unknown or revoked token"):
        auth.check("Decide", f"Bearer {other}")
    with pytest.raises(Unauthenticated, match="no credential"):
        auth.check("Decide", None)


def test_without_a_tokens_file_everyone_is_an_anonymous_caller_with_every_role() -> None:
    caller = Authenticator(None).check("ServerReflectionInfo", None)
    assert caller.anonymous and caller.roles == frozenset({"decide", "report", "admin"})
