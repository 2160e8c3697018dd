"""Settings cross to the server's worker and learner processes as JSON (Settings.to_processes):
every value arrives, the decision id secret included, while any other dump keeps it masked."""

from __future__ import annotations

from pathlib import Path

from server.config import Settings

SECRET = "a shared secret of replicas"


def test_workers_receive_the_secret_and_every_other_value() -> None:
    given = Settings(decision_id_secret=SECRET, port=7000, health_port=7001, workers=3, model_cache_dir=None)
    received = Settings.model_validate_json(given.to_processes())
    assert received == given
    assert received.decision_id_secret is not None and received.decision_id_secret.get_secret_value() == SECRET


def test_other_dumps_mask_the_secret() -> None:
    given = Settings(decision_id_secret=SECRET, data_dir=Path("/var/lib/nbo"))
    assert SECRET not in given.model_dump_json() and SECRET not in repr(given)
    assert '"decision_id_secret":"**********"' in given.model_dump_json()


def test_no_secret_stays_none() -> None:
    assert Settings.model_validate_json(Settings().to_processes()).decision_id_secret is None
