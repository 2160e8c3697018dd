"""Who is calling, and may they: API tokens with roles, checked before any handler runs.

Both transports hand the `authorization` value (gRPC metadata, HTTP header) to
`Authenticator.check`, which answers the Caller or raises Unauthenticated (no or an unknown
credential) or PermissionDenied (a known client without the method's role). With no tokens
file configured every call is admitted as an anonymous caller with every role: the server is as
open as before authentication existed, for `nbo demo` and a server on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from server.api.tokens import ROLES, TokenEntry

# the role each method needs; `admin` may call everything
METHOD_ROLES = {
    "Decide": "decide",
    "ReportOutcome": "report",
    "RecordConversion": "report",
    "ServerReflectionInfo": "admin",
}
ADMIN = "admin"
SCHEME = "bearer"
HOW = "send 'authorization: Bearer <token>' (gRPC metadata or HTTP header)"


class Unauthenticated(Exception):
    """No credential, or one the server does not know (UNAUTHENTICATED, HTTP 401)."""


class PermissionDenied(Exception):
    """A known client without the role the method needs (PERMISSION_DENIED, HTTP 403)."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str  # the client's name from the tokens file; "" when anonymous
    roles: frozenset[str]

    @property
    def anonymous(self) -> bool:
        return not self.name

    @property
    def admin(self) -> bool:
        """May report outcomes of other callers' decisions."""
        return "admin" in self.roles


ANONYMOUS = Caller("", frozenset(ROLES))


class Authenticator:
    """Checks a call's bearer token against the tokens file's hashes (None: no authentication)."""

    def __init__(self, entries: list[TokenEntry] | None) -> None:
        self.enabled = entries is not None
        self._entries = tuple(entries or ())

    def check(self, method: str, authorization: str | None) -> Caller:
        if not self.enabled:
            return ANONYMOUS
        caller = self._identify(authorization)
        needed = METHOD_ROLES[method]
        if needed not in caller.roles and ADMIN not in caller.roles:
            have = ", ".join(r for r in ROLES if r in caller.roles)
            raise PermissionDenied(
                f"client {caller.name!r} may not call {method}: it needs role {needed!r} (has {have})"
            )
        return caller

    def _identify(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated(f"no credential: {HOW}")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != SCHEME or not token:
            # never echo the value: it may be a token sent the wrong way
            raise Unauthenticated(f"the authorization value is not 'Bearer <token>': {HOW}")
        digest = hashlib.sha256(token.encode(errors="replace")).digest()
        found = None
        # every entry is compared, in constant time each, so timing says nothing about the match
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        if found is None:
            raise Unauthenticated("unknown or revoked token")
        return Caller(found.name, found.roles)
