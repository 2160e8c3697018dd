"""Loading the published models in every worker: compile, verify, warm up, then swap by reference.

The reloader polls `model:current` and the challenger setting (server.models.champion); a new
version is built off the event loop (compiling with lleaves where possible, the object file
cached beside the artifact so restarts and sibling workers do not recompile), checked against
its reference scores, warmed up, and only then handed to the worker. Anything that fails is
logged and the models already loaded keep serving.

Compiling takes seconds to minutes (about 1 s for 20 trees, 6 s for 100, 30 s for 300 on the
2-core test machine), so a worker that is already serving does not wait for it: a version
published while it serves is handed over at once with LightGBM's own Booster.predict (loaded
in milliseconds, scores within 1e-9 of the compiled ones, checked against the same reference
scores) and the compiled predictor replaces it when it is ready. That keeps a publication's
reach across replicas at the poll interval whatever the model's size. Before the worker
serves (start-up, and a replaced worker) it compiles first, as its readiness waits anyway, and
a version whose object file is already cached is compiled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis

from server.features.schema import FeatureSchema
from server.metrics import Metrics
from server.models.champion import Challenger
from server.models.forest import CompiledForest
from server.models.registry import (
    Artifact,
    ModelRejected,
    Split,
    artifact_from_record,
    booster_predict,
    schema_problem,
    text,
    verify_scores,
)
from server.models.scorers import ModelScorer, Predict
from server.state.keys import Keys
from server.state.polling import Poller

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        cache = folder / "model.o"
        if cache.exists():
            model.compile(cache=str(cache))
        else:  # lleaves writes the object file in place: a worker stopped mid-write must not leave half of one
            partial = folder / f"model.o.{os.getpid()}"
            model.compile(cache=str(partial))
            partial.replace(cache)
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
    """Polls the live model and the challenger setting; hands `on_change` the champion's scorer
    and the challenger (None when no split is on) whenever either changes. Scorers are kept by
    version while in use, so a promotion or a split switched off and on reuses the built one."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        metrics: Metrics,
        current_schema: Callable[[], FeatureSchema | None],
        on_change: Callable[[ModelScorer, Challenger | None], None],
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
        self._seen: tuple[str, Split | None] | None = None
        self._built: dict[str, ModelScorer] = {}
        self._live: tuple[ModelScorer, Challenger | None] | None = None
        self._serving = False  # set by start(): from then on a new version must not wait for its compiler
        self._compiling: dict[str, asyncio.Task[None]] = {}

    @property
    def compiling(self) -> bool:
        """Whether a served version is still being compiled (Booster.predict serves it meanwhile)."""
        return bool(self._compiling)

    def start(self) -> None:
        self._serving = True
        super().start()

    async def stop(self) -> None:
        await super().stop()
        for task in self._compiling.values():
            task.cancel()
        self._compiling.clear()

    async def check(self) -> bool:
        raw, split_raw = await self.client.mget([self.keys.model_current, self.keys.model_challenger])
        schema = self.current_schema()
        if raw is None or schema is None:
            return False
        version = text(raw)
        try:
            split = None if split_raw is None else Split.from_json(split_raw)
        except (ValueError, KeyError, TypeError) as err:
            log.error("unreadable challenger setting, serving the live model alone: %s", err)
            split = None
        if split is not None and split.version == version:
            split = None  # a model cannot challenge itself (set so only by a race with promote)
        if (version, split) == self._seen:
            return False
        self._seen = (version, split)
        champion = await self._scorer(version, schema)
        if champion is None:
            return False
        challenger = None
        if split is not None and (scorer := await self._scorer(split.version, schema)) is not None:
            challenger = Challenger(scorer, split.share, split.salt)
        kept = {version, split.version} if challenger is not None and split is not None else {version}
        self._built = {v: s for v, s in self._built.items() if v in kept}
        self._hand_over(champion, challenger)
        if challenger is not None:
            log.info(
                "serving model %s, and %s to %.4g of customers", version, challenger.scorer.version, challenger.share
            )
        return True

    async def _scorer(self, version: str, schema: FeatureSchema) -> ModelScorer | None:
        """The built scorer of `version`, building it if needed; None (logged) if it is rejected."""
        built = self._built.get(version)
        if built is not None and built.schema is schema:
            return built
        record_raw = await self.client.get(self.keys.model(version))
        if record_raw is None:
            log.error("model %s is named live or challenger but its record is missing", version)
            self.metrics.model_loads.labels("failed").inc()
            return None
        try:
            record: dict[str, Any] = json.loads(record_raw)
            artifact = artifact_from_record(record)
            later = self._serving and self.cache_dir is not None and not _cached(artifact, self.cache_dir)
            cache_dir = None if later else self.cache_dir
            scorer = await asyncio.to_thread(build_scorer, artifact, schema, cache_dir)
        except (ModelRejected, ValueError, KeyError) as err:
            log.error("model %s rejected; the previous models keep serving: %s", version, err)
            self.metrics.model_loads.labels("failed").inc()
            return None
        self._built[version] = scorer
        self.metrics.model_loads.labels("ok").inc()
        how = "compiled" if scorer.compiled else "Booster.predict"
        log.info("loaded model %s (%s%s)", version, how, "; compiling it meanwhile" if later else "")
        if later and version not in self._compiling:
            self._compiling[version] = asyncio.create_task(self._compile(artifact, schema), name=f"compile {version}")
        return scorer

    async def _compile(self, artifact: Artifact, schema: FeatureSchema) -> None:
        """Compile a version served by Booster.predict, and swap the compiled one in if that
        version is still served under the same schema."""
        try:
            scorer = await in_daemon_thread(build_scorer, artifact, schema, self.cache_dir)
        except ModelRejected as err:  # Booster.predict passed the same check: keep serving with it
            log.error("model %s: compiling failed, Booster.predict goes on serving it: %s", artifact.version, err)
            return
        finally:
            self._compiling.pop(artifact.version, None)
        served = self._built.get(artifact.version)
        if served is None or served.schema is not schema or not scorer.compiled or self._live is None:
            return
        self._built[artifact.version] = scorer
        log.info("model %s compiled: swapped in for Booster.predict", artifact.version)
        self._hand_over(*self._live)

    def _hand_over(self, champion: ModelScorer, challenger: Challenger | None) -> None:
        """Give the worker the pair, each scorer in its best built form (compiled once it is)."""
        champion = self._built.get(champion.version, champion)
        if challenger is not None and isinstance(challenger.scorer, ModelScorer):
            best = self._built.get(challenger.scorer.version, challenger.scorer)
            challenger = dataclasses.replace(challenger, scorer=best)
        self._live = (champion, challenger)
        self.on_change(champion, challenger)


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread of its own: unlike asyncio.to_thread's executor, which the
    process waits for on exit, a compile still running when the worker stops (tens of seconds
    for a large model) does not hold up the exit; it is dropped with the process."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (fn(*args), None)
        except BaseException as err:
            outcome = (None, err)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=getattr(fn, "__name__", "task"), daemon=True).start()
    return await future


def _cached(artifact: Artifact, cache_dir: Path) -> bool:
    """Whether the version's object file is cached (written by compiled_predict): loading it is quick."""
    return (cache_dir / artifact.version / "model.o").exists()
