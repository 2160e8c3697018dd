"""`nbo tokens {add,list,revoke}`: the API tokens file of auth_tokens_file (server.api.tokens).

`add` makes a token, prints it once and appends only its SHA-256; nothing can show it again.
Servers read the file when their workers start: restart them (`nbo serve` again, or a rolling
restart of the replicas) for an added or revoked token to count.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from server.cli.common import err_console, print_lines, settings

NAME = "tokens"
HELP = "API tokens of the callers and their roles (decide, report, admin)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokens_command", required=True)
    p = sub.add_parser("add", help="make a token for a client, print it once, append its hash to the file")
    p.add_argument("name", help="client name (letters, digits, _ . @ -)")
    p.add_argument("--roles", required=True, help="comma-separated: decide, report, admin")
    _file_flag(p)
    p = sub.add_parser("list", help="clients, their roles and the first digits of each token's hash")
    _file_flag(p)
    p = sub.add_parser("revoke", help="remove a client's tokens from the file")
    p.add_argument("name")
    p.add_argument("--hash", default="", help="only the token whose hash starts with this (see `list`)")
    _file_flag(p)


def _file_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", type=Path, help="the tokens file (default: NBO_AUTH_TOKENS_FILE)")


def run(opts: argparse.Namespace) -> int:
    path: Path | None = opts.file or settings(argparse.Namespace()).auth_tokens_file
    if path is None:
        err_console.print("error: no tokens file: give --file or set NBO_AUTH_TOKENS_FILE")
        return 2
    from server.api.tokens import TokenFileError, read_tokens

    if path.exists() or opts.tokens_command != "add":
        try:
            read_tokens(path)  # never append to (or rewrite) a file the server would refuse
        except TokenFileError as err:
            err_console.print(f"error: {err}")
            return 2
    return {"add": _add, "list": _list, "revoke": _revoke}[opts.tokens_command](opts, path)


def _add(opts: argparse.Namespace, path: Path) -> int:
    from server.api.tokens import format_line, name_problem, new_token, parse_roles, token_digest

    if problem := name_problem(opts.name):
        err_console.print(f"error: {problem}")
        return 2
    try:
        roles = parse_roles(opts.roles)
    except ValueError as err:
        err_console.print(f"error: --roles: {err}")
        return 2
    token = new_token()
    added = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = f"{format_line(opts.name, roles, token_digest(token))}  # added {added}\n"
    # owner-only from its first byte: the hashes are no secret, but nobody else should edit it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        if out.tell() and not path.read_bytes().endswith(b"\n"):
            out.write("\n")
        out.write(line)
    print_lines([token])
    print_lines(
        [
            f"added client {opts.name!r} ({', '.join(sorted(roles))}) to {path}.",
            "The token above is shown once and stored nowhere: give it to the client now.",
            "Servers read the file when they start: restart them for it to count.",
        ],
        stderr=True,
    )
    return 0


def _list(opts: argparse.Namespace, path: Path) -> int:
    from server.api.tokens import ROLES, read_tokens

    entries = read_tokens(path)
    rows = [f"{e.name}  {','.join(r for r in ROLES if r in e.roles)}  {e.digest.hex()[:8]}" for e in entries]
    print_lines(rows or [f"no tokens in {path}"], stderr=not rows)
    return 0


def _revoke(opts: argparse.Namespace, path: Path) -> int:
    from server.api.tokens import parse_tokens

    kept, removed = [], 0
    for line in path.read_text().splitlines(keepends=True):
        entry = parse_tokens(line, str(path))
        if entry and entry[0].name == opts.name and entry[0].digest.hex().startswith(opts.hash.lower()):
            removed += 1
        else:
            kept.append(line)
    if not removed:
        err_console.print(f"error: no token of {opts.name!r}{' with hash ' + opts.hash if opts.hash else ''} in {path}")
        return 1
    path.write_text("".join(kept))
    print_lines([f"revoked {removed} token(s) of {opts.name!r}; restart the servers for it to count"], stderr=True)
    return 0
