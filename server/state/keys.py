"""Every Redis key the server uses, in one place.

Per-customer keys carry the hash tag `{c:<id>}` so one customer's keys share a Redis Cluster
slot and a Lua script may touch them together; a campaign's budget counters (its own and its
offers') carry `{b:<campaign>}`, and a channel's hourly capacity `{ch:<channel>}` (see
server.catalog.budgets), so budgets spread over a cluster's shards with the campaigns. Every
script touches one of those slots only. Ids must be validated (server.ids) first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "nbo:"

    # -- per customer ------------------------------------------------------------------------
    def features(self, customer_id: str) -> str:
        return f"{self.prefix}{{c:{customer_id}}}:features"

    def contacts(self, customer_id: str) -> str:
        """Hash: per-offer decline time, presented-without-response counts, suppression."""
        return f"{self.prefix}{{c:{customer_id}}}:contacts"

    def channel_contacts(self, customer_id: str, channel: str) -> str:
        """Sorted set of award ids scored by award time, for frequency caps."""
        return f"{self.prefix}{{c:{customer_id}}}:sent:{channel}"

    def request(self, customer_id: str, request_id: str) -> str:
        return f"{self.prefix}{{c:{customer_id}}}:req:{request_id}"

    def decision(self, customer_id: str, decision_id: str) -> str:
        return f"{self.prefix}{{c:{customer_id}}}:dec:{decision_id}"

    def outcome_event(self, customer_id: str, event_digest: str) -> str:
        return f"{self.prefix}{{c:{customer_id}}}:ev:{event_digest}"

    def features_pattern(self) -> str:
        return f"{self.prefix}{{c:*}}:features"

    # -- global: one tag, so that publishing (a transaction over several) stays in one slot --
    @property
    def schema_current(self) -> str:
        return f"{self.prefix}{{g}}:schema:current"

    def schema(self, version: int) -> str:
        return f"{self.prefix}{{g}}:schema:v{version}"

    @property
    def catalog_current(self) -> str:
        return f"{self.prefix}{{g}}:catalog:current"

    def catalog(self, version: int) -> str:
        return f"{self.prefix}{{g}}:catalog:v{version}"

    @property
    def catalog_seq(self) -> str:
        return f"{self.prefix}{{g}}:catalog:seq"

    @property
    def decision_id_secret(self) -> str:
        """The secret every replica seals customer ids into decision ids with (server.ids)."""
        return f"{self.prefix}{{g}}:decision_id_secret"

    def model(self, version: str) -> str:
        return f"{self.prefix}{{g}}:model:v:{version}"

    @property
    def model_current(self) -> str:
        return f"{self.prefix}{{g}}:model:current"

    @property
    def model_history(self) -> str:
        """List of published versions, oldest first; rollback pops the live one."""
        return f"{self.prefix}{{g}}:model:history"

    @property
    def model_challenger(self) -> str:
        """JSON {version, share, salt} of the model serving a share of customers, when one does."""
        return f"{self.prefix}{{g}}:model:challenger"

    @property
    def model_retired(self) -> str:
        """Hash: version -> when it was rolled back (still listed, no longer in the history)."""
        return f"{self.prefix}{{g}}:model:retired"

    @property
    def retrain_comparisons(self) -> str:
        """List of `nbo retrain` comparisons (JSON), oldest first; appended to, never rewritten."""
        return f"{self.prefix}{{g}}:retrain:comparisons"

    # -- budgets: one tag per campaign (its counters and its offers'), one per channel ---------
    def budget_total(self, campaign: str) -> str:
        return f"{self.prefix}{{b:{campaign}}}:total"

    def budget_day(self, campaign: str, day: str) -> str:
        return f"{self.prefix}{{b:{campaign}}}:day:{day}"

    def budget_hour(self, channel: str, hour: str) -> str:
        """Hash {ch:<channel>:n}: the channel's awards in one hour, for its hourly capacity."""
        return f"{self.prefix}{{ch:{channel}}}:hour:{hour}"

    def budget_pattern(self) -> str:
        """Every campaign's budget hash (SCAN MATCH); channel hours are `channel_hour_pattern`."""
        return f"{self.prefix}{{b:*}}:*"

    def channel_hour_pattern(self) -> str:
        return f"{self.prefix}{{ch:*}}:hour:*"

    # -- the bandit's learned parameters: one tag, so a learning step is one script in one slot --
    @property
    def bandit_arms(self) -> str:
        """Hash: arm (`<offer>|<channel>`) -> "mean,precision,n" of its offset's posterior."""
        return f"{self.prefix}{{bandit}}:arms"

    @property
    def bandit_version(self) -> str:
        """Counter bumped by every learning step; replicas reload the arms when it moves."""
        return f"{self.prefix}{{bandit}}:version"

    def bandit_seen(self, decision_id: str, offer_id: str) -> str:
        """Set once the (decision, offer) reward was learned from, so redelivery is harmless."""
        return f"{self.prefix}{{bandit}}:seen:{decision_id}:{offer_id}"

    # -- per client: one tag each, so a client's rate limit is one slot wherever its calls land --
    def rate_bucket(self, bucket: str) -> str:
        """Hash {tokens, at}: the token bucket of a client name (or `@<address>`, anonymous)."""
        return f"{self.prefix}{{r:{bucket}}}:bucket"

    @property
    def decision_stream(self) -> str:
        return f"{self.prefix}log:decisions"

    @property
    def outcome_stream(self) -> str:
        return f"{self.prefix}log:outcomes"

    # -- conversions: the stream and its event keys share one tag, so that one script records
    # a conversion and its event id together (exactly once in the log, on a cluster too) --
    @property
    def conversion_stream(self) -> str:
        return f"{self.prefix}{{cv}}:log:conversions"

    def conversion_event(self, event_digest: str) -> str:
        return f"{self.prefix}{{cv}}:ev:{event_digest}"
