"""TLS for the API ports and their callers, from the files Settings names (validated there).

Server side: gRPC credentials and an ssl.SSLContext for the HTTP port, both requiring a client
certificate signed by tls_client_ca_file when it is set (mutual TLS). Client side: `ClientTls`,
the CA to trust and an optional certificate for mutual TLS, and channels built from it; without
one a channel is plaintext, exactly as before.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.config import Settings

ChannelOptions = Sequence[tuple[str, Any]]


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """The gRPC port's certificate, and with tls_client_ca_file the CA its callers' must chain to."""
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The same for the HTTP port."""
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class ClientTls:
    """How a caller connects with TLS: the CA to trust (None: the system's) and, for a mutual-TLS
    server, its own certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientTls | None:
        """From tls_ca_file / tls_client_cert_file / tls_client_key_file; None if none is set."""
        if settings.tls_ca_file is None and settings.tls_client_cert_file is None:
            return None
        return cls(settings.tls_ca_file, settings.tls_client_cert_file, settings.tls_client_key_file)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTP callers (urllib, aiohttp)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def channel(target: str, tls: ClientTls | None, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel: TLS with `tls`, plaintext without."""
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=options)


def aio_channel(target: str, tls: ClientTls | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An asyncio channel: TLS with `tls`, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)
