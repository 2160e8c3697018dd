"""Customer ids and credentials out of log lines.

`install()` puts a LogRecord factory in place, so every record of the process (ours, the
libraries', with their tracebacks) is cleaned once, when it is made, whatever handler it later
reaches: bearer values and API tokens always; customer ids unless `log_customer_ids`. A customer
id is recognised where it has a known shape in text: the `{c:<id>}` hash tag of a Redis key
(decision ids are sealed and carry none: server.ids). Each becomes `#` and 10 hex digits of a keyed hash, the same for
the same id within the process (so lines about one customer still correlate) and not
reversible by hashing guessed ids without the process's random key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from typing import Any

_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+")
# an API token (server.api.tokens): 43 URL-safe characters, at least one a capital or a digit, so
# that names such as nbo_log_records_dropped_total stay readable
_TOKEN = re.compile(r"\bnbo_(?=[A-Za-z0-9_-]{0,42}[A-Z0-9])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_KEY_TAG = re.compile(r"\{c:([^}#][^}]*)\}")


class _Policy:
    key = os.urandom(16)
    keep_ids = False
    installed = False


_lock = threading.Lock()


def customer(customer_id: str) -> str:
    """What a log line may show of a customer id."""
    if _Policy.keep_ids:
        return customer_id
    return "#" + hmac.new(_Policy.key, customer_id.encode(), hashlib.sha256).hexdigest()[:10]


def clean(text: str) -> str:
    """`text` without credentials, and without customer ids unless they may be logged."""
    text = _TOKEN.sub("nbo_<redacted>", _BEARER.sub(r"\1<redacted>", text))
    if _Policy.keep_ids:
        return text
    return _KEY_TAG.sub(lambda m: "{c:" + customer(m.group(1)) + "}", text)


def _clean_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it for logging to report
        return
    cleaned = clean(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        # formatted now, so the formatter prints the cleaned text instead of its own
        record.exc_text = clean(logging.Formatter().formatException(record.exc_info))


def install(*, log_customer_ids: bool = False) -> None:
    """Clean every log record of this process from now on (idempotent; the last call's
    `log_customer_ids` applies)."""
    with _lock:
        _Policy.keep_ids = log_customer_ids
        if _Policy.installed:
            return
        make = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            _clean_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _Policy.installed = True
