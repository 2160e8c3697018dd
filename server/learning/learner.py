"""The bandit's online learner, and how every replica picks up what it learned.

The learner reads the outcome stream through a consumer group (at least once: entries are
acknowledged after their update is applied, and entries of a dead learner are reclaimed), turns
each ACCEPTED / CONVERTED (reward 1) or DECLINED (reward 0) into one learning step of the arm
(offer x channel), and publishes by writing the arms hash and bumping a version counter in
Redis. The step is a script that remembers each (decision, offer) it learned from, so a
redelivered outcome or an ACCEPTED followed by CONVERTED is learned once. Replicas poll the
version every `catalog_poll_seconds` and reload the arms when it moved.

Replicas pick the arms up through server.learning.arms.ArmsReloader. Several learners may run (one per
`nbo serve --learner`, or `nbo learner` processes): they share the consumer group, so each
outcome goes to one of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from server.catalog.bandit_section import bandit_policy
from server.catalog.exploration import BanditPolicy
from server.config import Settings, configure_logging
from server.domain import RESPONSES, Outcome
from server.learning.arm_inputs import decode_inputs
from server.learning.posterior import arm_key
from server.metrics import Metrics
from server.state.keys import Keys
from server.state.records import RecordError, decode_outcome_record
from server.state.redis_client import aclose, async_client, is_cluster
from server.state.streams import StreamConsumer

log = logging.getLogger(__name__)
GROUP = "learner"
LAG_EVERY_SECONDS = 1.0  # how often the lag gauges are refreshed (two XINFO calls)
UNREAD_CAP = 1000  # unread outcomes counted one by one where Redis does not report the group's lag
# the reward of an outcome the bandit learns from: 1 for a response (server.domain.RESPONSES)
REWARD = {**dict.fromkeys(RESPONSES, 1), Outcome.DECLINED.value: 0}


class Learner:
    def __init__(
        self, client: aioredis.Redis, keys: Keys, metrics: Metrics, settings: Settings, consumer: str = ""
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.settings = settings
        self.policy = BanditPolicy()
        self.consumer = StreamConsumer(
            client,
            keys.outcome_stream,
            GROUP,
            consumer or f"{socket.gethostname()}-{os.getpid()}",
            batch=500,
            claim_idle_ms=int(settings.learner_claim_idle_seconds * 1000),
        )
        self._learn = client.register_script(resources.files("server.state").joinpath("lua", "learn.lua").read_text())
        self._catalog_seq: bytes | str | None = None
        self._applied_ms: int | None = None  # time part of the newest entry id this learner applied
        self._lag_at = -math.inf

    async def _refresh_policy(self) -> None:
        """Follow the live catalog's `bandit` section (decay, priors); only that section is read,
        so the learner needs neither the feature schema nor a compiled catalog."""
        seq = await self.client.get(self.keys.catalog_current)
        if seq is None or seq == self._catalog_seq:
            return
        raw = await self.client.get(self.keys.catalog(int(seq)))
        if raw is None:
            return
        self.policy = bandit_policy(json.loads(raw)["text"])
        self._catalog_seq = seq

    async def start(self) -> None:
        await self.consumer.ensure_group()
        await self._refresh_policy()

    async def stop(self) -> None:
        """Nothing runs in the background; kept so callers can treat learners like pollers."""

    async def step(self) -> int:
        """Learn from one batch of outcomes; the number of arms updated."""
        await self._refresh_policy()
        entries = await self.consumer.read()
        if not entries:
            await self._observe_lag()
            return 0
        updates = [u for entry_id, fields in entries if (u := self._update_args(entry_id, fields)) is not None]
        queued = len(updates)
        learned = sum(int(r) for r in await self._apply(updates))
        self.metrics.bandit_updates.labels("learned").inc(learned)
        self.metrics.bandit_updates.labels("duplicate").inc(queued - learned)
        self.metrics.bandit_updates.labels("skipped").inc(len(entries) - queued)
        # acknowledged only now: a crash before this line redelivers, and the script dedupes
        await self.consumer.ack([entry_id for entry_id, _ in entries])
        self._applied_ms = max(self._applied_ms or 0, *(_id_ms(entry_id) for entry_id, _ in entries))
        await self._observe_lag()
        return learned

    async def _apply(self, updates: list[tuple[list[str], list[str | float | int]]]) -> list[Any]:
        """Run the learning script for each update, in log order."""
        if is_cluster(self.client):
            # redis-py's cluster pipeline refuses scripts: one call each, to the {bandit} master
            return [await self._learn(keys=keys, args=args) for keys, args in updates]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in updates:
            await self._learn(keys=keys, args=args, client=pipe)
        return list(await pipe.execute()) if updates else []

    async def _observe_lag(self) -> None:
        """How far behind the outcome stream the learners are: entries not yet acknowledged by the
        group (read or not), and the time from the newest entry back to the newest applied here."""
        now = asyncio.get_running_loop().time()
        if now - self._lag_at < LAG_EVERY_SECONDS:
            return
        self._lag_at = now
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_stream(self.keys.outcome_stream)
        pipe.xinfo_groups(self.keys.outcome_stream)
        stream, groups = await pipe.execute()
        group = next(g for g in groups if _text(g["name"]) == GROUP)
        newest, delivered = stream["last-generated-id"], group["last-delivered-id"]
        caught_up = int(group["pending"]) == 0 and _text(newest) == _text(delivered)
        unread = 0 if _text(newest) == _text(delivered) else group.get("lag")
        if unread is None:  # Redis < 7 (or after some trims) does not say: count, up to a cap
            after = await self.client.xrange(self.keys.outcome_stream, f"({_text(delivered)}", "+", count=UNREAD_CAP)
            unread = len(after or [])
        self.metrics.learner_pending.set(int(group["pending"]) + int(unread))
        applied = self._applied_ms if self._applied_ms is not None else _id_ms(delivered)
        if applied == 0 and stream.get("first-entry"):  # nothing read yet: the whole stream is behind
            applied = _id_ms(stream["first-entry"][0])
        self.metrics.learner_lag.set(0.0 if caught_up else max(0, _id_ms(newest) - applied) / 1000)

    def _update_args(
        self, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> tuple[list[str], list[str | float | int]] | None:
        try:
            record = decode_outcome_record(fields)
        except RecordError as err:
            # acknowledged with its batch: a record that cannot be read now never will be
            log.warning("outcome %s skipped: %s", entry_id.decode(errors="replace"), err)
            return None
        reward = REWARD.get(record.outcome)
        if reward is None or not math.isfinite(record.propensity) or not record.channel:
            return None  # PRESENTED, or an outcome logged before the learner's fields existed
        prior_sd = record.prior_sd if math.isfinite(record.prior_sd) and record.prior_sd > 0 else self.policy.prior_sd
        p = min(max(record.propensity, 1e-6), 1 - 1e-6)
        signature, inputs = decode_inputs(record.arm_inputs)
        weights: list[str | float | int] = []
        # inputs drawn under the live declaration teach the weights; any other (a catalog changed
        # since the decision) only the intercept, as an outcome without inputs does
        if signature and signature == self.policy.signature and len(inputs) == len(self.policy.inputs):
            weights = [signature, 1.0 / self.policy.input_prior_sd**2, *inputs]
        return (
            [
                self.keys.bandit_arms,
                self.keys.bandit_seen(record.decision_id, record.offer_id),
                self.keys.bandit_version,
            ],
            [
                arm_key(record.offer_id, record.channel),
                math.log(p / (1 - p)),
                reward,
                1.0 / prior_sd**2,
                self.policy.decay,
                self.settings.bandit_seen_ttl_seconds,
                *weights,
            ],
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except (OSError, aioredis.RedisError) as err:
                    log.warning("learner step failed, retrying: %s", err)
                    await asyncio.sleep(1.0)
        finally:
            await self.stop()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_ms(entry_id: bytes | str) -> int:
    """The time part (ms since the epoch) of a stream entry id `<ms>-<seq>`."""
    return int(_text(entry_id).split("-", 1)[0])


async def run_learner(
    settings: Settings, redis_url: str, stop: asyncio.Event | None = None, *, serve_metrics: bool = False
) -> None:
    """`serve_metrics`: on its own (`nbo learner`), serve them on metrics_port; under `nbo serve`
    the supervisor's endpoint adds them to the workers'."""
    # not the hot path's client: its short socket timeout would cut the blocking stream reads
    client = async_client(redis_url, settings)
    learner = Learner(client, Keys(settings.key_prefix), Metrics(), settings)
    if serve_metrics and settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=learner.metrics.registry)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("learner (pid %d) consuming %s as group %r", os.getpid(), learner.keys.outcome_stream, GROUP)
    try:
        await learner.run(stop)
    finally:
        await aclose(client)


def learner_main(settings_json: str, redis_url: str) -> None:
    """Entry point of the learner process `nbo serve --learner` spawns."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, log_customer_ids=settings.log_customer_ids)
    asyncio.run(run_learner(settings, redis_url))
