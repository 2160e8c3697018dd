"""How a Redis URL becomes a client's options, and how it is shown without its password."""

from __future__ import annotations

import pytest

from server.config import Settings
from server.state.redis_client import redacted, tls_options
from tests.certs import Certs


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6380/0"),
        ("rediss://nbo:s3cret@redis.internal:6380/2", "rediss://nbo:***@redis.internal:6380/2"),
        ("rediss://:s3cret@redis.internal/0", "rediss://***@redis.internal/0"),
        ("rediss://nbo:s3cret@[::1]:6380", "rediss://nbo:***@[::1]:6380"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_only_a_rediss_url_gets_the_tls_files(certs: Certs) -> None:
    url = "rediss://nbo:pw@127.0.0.1:6380/0"
    settings = Settings(
        redis_url=url,
        redis_tls_ca_file=certs.ca,
        redis_tls_cert_file=certs.client_cert,
        redis_tls_key_file=certs.client_key,
    )
    assert tls_options(url, settings) == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
    }
    # the embedded Redis the commands may fall back to is plain, whatever the settings say
    assert tls_options("redis://127.0.0.1:6379/0", settings) == {}
    assert tls_options(url, Settings(redis_url=url)) == {"ssl_cert_reqs": "required"}
