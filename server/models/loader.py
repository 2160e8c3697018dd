"""Loading a published model in every worker: compile, verify, warm up, then swap by reference.

The reloader polls `model:current`; a new version is built off the event loop (compiling with
lleaves where possible, the object file cached beside the artifact so restarts and sibling
workers do not recompile), checked against its reference scores, warmed up, and only then
handed to the worker. Anything that fails is logged and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from server.features.schema import FeatureSchema
from server.metrics import Metrics
from server.models.forest import CompiledForest
from server.models.registry import (
    Artifact,
    ModelRejected,
    artifact_from_record,
    booster_predict,
    schema_problem,
    verify_scores,
)
from server.models.scorers import ModelScorer, Predict
from server.state.keys import Keys
from server.state.polling import Poller

log = logging.getLogger(__name__)


def compiled_predict(artifact: Artifact, cache_dir: Path) -> Predict:
    """A lleaves-compiled predictor, the object file cached under `cache_dir/<version>/`."""
    import lleaves

    folder = cache_dir / artifact.version
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / "model.txt"
    # workers compile the same model at the same time: one compiles, the others reuse its file;
    # the text is written under the lock too, or a sibling would parse (or truncate) a half file
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not model_file.exists():
            partial = folder / f"model.txt.{os.getpid()}"
            partial.write_text(artifact.model_text)
            partial.replace(model_file)
        model = lleaves.Model(model_file=str(model_file))
        model.compile(cache=str(folder / "model.o"))
    return CompiledForest(model)


def build_scorer(artifact: Artifact, schema: FeatureSchema, cache_dir: Path | None) -> ModelScorer:
    """Validate, compile (or fall back), verify and warm up; raises ModelRejected."""
    if problem := schema_problem(artifact.spec, schema):
        raise ModelRejected(f"feature schema mismatch: {problem}")
    predict: Predict | None = None
    compiled = False
    if cache_dir is not None:
        try:
            predict = compiled_predict(artifact, cache_dir)
            verify_scores(artifact, predict)
            compiled = True
        except ModelRejected as err:
            log.warning("compiled model %s disagrees with LightGBM (%s); using Booster.predict", artifact.version, err)
            predict = None
        except Exception as err:  # no compiler toolchain, unsupported model, ...
            # with the traceback: the fallback is several times slower, the cause must be findable
            log.warning("cannot compile model %s (%s); using Booster.predict", artifact.version, err, exc_info=True)
            predict = None
    if predict is None:
        try:
            predict = booster_predict(artifact.model_text)
        except Exception as err:
            raise ModelRejected(f"model does not load: {err}") from err
        verify_scores(artifact, predict)
    for _ in range(3):  # warm-up: first calls pay for page faults and lazy initialisation
        predict(artifact.reference_rows)
    return ModelScorer(artifact.version, artifact.spec, predict, schema, compiled)


class ModelReloader(Poller):
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        metrics: Metrics,
        current_schema: Callable[[], FeatureSchema | None],
        on_change: Callable[[ModelScorer], None],
        poll_seconds: float,
        cache_dir: Path | None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.current_schema = current_schema
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self.cache_dir = cache_dir
        self._seen: str | None = None

    async def check(self) -> bool:
        raw = await self.client.get(self.keys.model_current)
        schema = self.current_schema()
        if raw is None or schema is None:
            return False
        version = raw.decode() if isinstance(raw, bytes) else str(raw)
        if version == self._seen:
            return False
        self._seen = version
        record_raw = await self.client.get(self.keys.model(version))
        if record_raw is None:
            log.error("model %s is live but its record is missing", version)
            self.metrics.model_loads.labels("failed").inc()
            return False
        try:
            record: dict[str, Any] = json.loads(record_raw)
            artifact = artifact_from_record(record)
            scorer = await asyncio.to_thread(build_scorer, artifact, schema, self.cache_dir)
        except (ModelRejected, ValueError, KeyError) as err:
            log.error("model %s rejected; the previous model keeps serving: %s", version, err)
            self.metrics.model_loads.labels("failed").inc()
            return False
        self.on_change(scorer)
        self.metrics.model_loads.labels("ok").inc()
        log.info("serving model %s (%s)", version, "compiled" if scorer.compiled else "Booster.predict")
        return True
