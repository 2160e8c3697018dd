"""Propensity-model artifacts: their metadata and checksum, validation, and publishing through Redis.

An artifact is a directory written by `nbo train`:

* `model.txt`       the LightGBM model
* `inputs.json`     its input columns (server.models.inputs.InputSpec)
* `reference.json`  validation rows and the probabilities the model gave them at training
* `metrics.json`    evaluation figures
* `metadata.json`   version, created time, feature-schema hash, training-data hash, library
                    versions, metrics and a SHA-256 checksum of the files above

`publish` checks the checksum, that the model's customer features match the live feature
schema, and that the reference rows score finite and equal to the recorded scores; only then
it stores the artifact in Redis (`model:v<N>`) and moves `model:current`, so every replica,
on any machine, loads the same bytes. `rollback` moves the pointer back.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from server.features.schema import FeatureSchema
from server.models.inputs import InputSpec
from server.state.keys import Keys

ARTIFACT_FILES = ("model.txt", "inputs.json", "reference.json")
SCORE_TOLERANCE = 1e-9


class ModelRejected(ValueError):
    """The artifact failed validation; nothing was published."""


@dataclass(frozen=True)
class Artifact:
    version: str
    model_text: str
    spec: InputSpec
    reference_rows: npt.NDArray[np.float64]
    reference_scores: npt.NDArray[np.float64]
    metadata: dict[str, Any]


def checksum(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
    return digest.hexdigest()


def finalize(
    directory: Path, *, data_path: Path | None = None, metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write metadata.json (with version and checksum) for a freshly trained artifact."""
    import lightgbm

    spec = InputSpec.from_json(json.loads((directory / "inputs.json").read_text()))
    data_hash = None
    if data_path is not None:
        h = hashlib.sha256()
        # a partitioned dataset (a directory): every file's path and bytes, in path order
        files = sorted(p for p in data_path.rglob("*") if p.is_file()) if data_path.is_dir() else [data_path]
        for path in files:
            if data_path.is_dir():
                h.update(path.relative_to(data_path).as_posix().encode() + b"\0")
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        data_hash = h.hexdigest()
    digest = checksum(directory)
    created = time.time()
    meta = {
        "version": time.strftime("%Y%m%d-%H%M%S", time.gmtime(created)) + "-" + digest[:8],
        "created": created,
        "feature_schema_hash": spec.schema_hash(),
        "training_data_sha256": data_hash,
        "metrics": metrics or {},
        "libraries": {"lightgbm": lightgbm.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "checksum_sha256": digest,
    }
    (directory / "metadata.json").write_text(json.dumps(meta, indent=2))
    return meta


def _reference(data: dict[str, Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rows = np.array([[np.nan if v is None else v for v in row] for row in data["rows"]], dtype=np.float64)
    return rows, np.asarray(data["scores"], dtype=np.float64)


def read_artifact(directory: Path) -> Artifact:
    """Read and checksum-verify an artifact directory; ModelRejected on any problem."""
    directory = Path(directory)
    missing = [n for n in (*ARTIFACT_FILES, "metadata.json") if not (directory / n).is_file()]
    if missing:
        raise ModelRejected(f"{directory}: missing {', '.join(missing)}")
    try:
        meta = json.loads((directory / "metadata.json").read_text())
        spec = InputSpec.from_json(json.loads((directory / "inputs.json").read_text()))
        rows, scores = _reference(json.loads((directory / "reference.json").read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise ModelRejected(f"{directory}: unreadable artifact: {err}") from err
    actual = checksum(directory)
    if actual != meta.get("checksum_sha256"):
        raise ModelRejected(
            f"{directory}: checksum mismatch (metadata says {str(meta.get('checksum_sha256'))[:12]}..., "
            f"files give {actual[:12]}...): the artifact was modified or corrupted"
        )
    return Artifact(str(meta["version"]), (directory / "model.txt").read_text(), spec, rows, scores, meta)


def schema_problem(spec: InputSpec, schema: FeatureSchema) -> str | None:
    """Why the model's customer features do not fit the live schema, or None."""
    problems = []
    for col in spec.columns:
        if col.source != "feature":
            continue
        live = schema.spec(col.name)
        if live is None:
            problems.append(f'feature "{col.name}" is not in the live schema v{schema.version}')
        elif (live.kind == "categorical") != col.categorical:
            problems.append(f'feature "{col.name}" is {live.kind} in the live schema')
        elif col.categorical and live.levels[: len(col.levels)] != col.levels:
            problems.append(
                f'feature "{col.name}" has levels {list(live.levels)} live, {list(col.levels)} in the model'
            )
    model_features = {c.name for c in spec.columns if c.source == "feature"}
    extra = [f.name for f in schema.features if f.name not in model_features]
    if extra:
        problems.append(f"live features the model does not know: {', '.join(extra)}")
    return "; ".join(problems) or None


def verify_scores(artifact: Artifact, predict: Any) -> None:
    """Score the reference rows with `predict`; they must be finite and equal the recorded ones."""
    got = np.asarray(predict(artifact.reference_rows), dtype=np.float64)
    if got.shape != artifact.reference_scores.shape:
        raise ModelRejected(f"reference rows gave {got.shape} scores, expected {artifact.reference_scores.shape}")
    if not np.all(np.isfinite(got)):
        raise ModelRejected(f"{int(np.sum(~np.isfinite(got)))} reference rows scored NaN or infinite")
    diff = float(np.max(np.abs(got - artifact.reference_scores))) if got.size else 0.0
    if diff > SCORE_TOLERANCE:
        raise ModelRejected(f"reference rows score differently from training (max difference {diff:.3g})")


def booster_predict(model_text: str) -> Any:
    import lightgbm

    booster = lightgbm.Booster(model_str=model_text)
    return lambda rows: booster.predict(rows, num_threads=1)


def _load_and_verify(artifact: Artifact) -> None:
    try:
        predict = booster_predict(artifact.model_text)
    except Exception as err:  # lightgbm raises its own error type for a corrupt model
        raise ModelRejected(f"model.txt does not load: {err}") from err
    verify_scores(artifact, predict)


def validate_in_child(artifact: Artifact) -> None:
    """Load and score the model in a child process: some malformed models make LightGBM abort
    the whole process, which must cost a rejected publish, not the caller."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            pool.submit(_load_and_verify, artifact).result(timeout=300)
        except BrokenProcessPool as err:
            raise ModelRejected("model.txt crashed LightGBM while loading (malformed model)") from err


def publish(client: redis.Redis, keys: Keys, directory: Path, schema: FeatureSchema | None) -> str:
    """Validate an artifact and make it the live model; return its version."""
    artifact = read_artifact(directory)
    if schema is None:
        raise ModelRejected("no feature schema in Redis: load customer features first")
    if problem := schema_problem(artifact.spec, schema):
        raise ModelRejected(f"feature schema mismatch: {problem}")
    validate_in_child(artifact)
    record = {
        "version": artifact.version,
        "model": artifact.model_text,
        "inputs": artifact.spec.to_json(),
        "reference": json.loads((Path(directory) / "reference.json").read_text()),
        "metadata": artifact.metadata,
        "published_at": time.time(),
    }
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.model(artifact.version), json.dumps(record))
    pipe.lrem(keys.model_history, 0, artifact.version)
    pipe.rpush(keys.model_history, artifact.version)
    pipe.hdel(keys.model_retired, artifact.version)
    pipe.set(keys.model_current, artifact.version)
    _end_split_if(client, pipe, keys, artifact.version)
    pipe.execute()
    return artifact.version


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Split:
    """The challenger setting as stored: which version, the share of customers, the salt."""

    version: str
    share: float
    salt: str

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "share": self.share, "salt": self.salt})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Split:
        data = json.loads(raw)
        return cls(str(data["version"]), float(data["share"]), str(data["salt"]))


def read_split(client: redis.Redis, keys: Keys) -> Split | None:
    raw = client.get(keys.model_challenger)
    return None if raw is None else Split.from_json(raw)


def _end_split_if(client: redis.Redis, pipe: Any, keys: Keys, live: str) -> None:
    """Queue the end of the split when its challenger is becoming the live model: a model
    cannot challenge itself."""
    split = read_split(client, keys)
    if split is not None and split.version == live:
        pipe.delete(keys.model_challenger)


def rollback(client: redis.Redis, keys: Keys) -> str:
    """Point the servers at the model published before the live one; return its version. The
    rolled-back version leaves the history (a second rollback goes further back) but stays
    stored and listed, marked."""
    raw = client.get(keys.model_current)
    live = None if raw is None else text(raw)
    history = [text(v) for v in client.lrange(keys.model_history, 0, -1)]
    if live is None or live not in history:
        raise ModelRejected("no live model to roll back from")
    i = history.index(live)
    if i == 0:
        raise ModelRejected(f"{live} is the first published model; nothing to roll back to")
    previous = history[i - 1]
    pipe = client.pipeline(transaction=True)
    pipe.lrem(keys.model_history, 0, live)
    pipe.hset(keys.model_retired, live, str(time.time()))
    pipe.set(keys.model_current, previous)
    _end_split_if(client, pipe, keys, previous)
    pipe.execute()
    return previous


@dataclass(frozen=True, slots=True)
class Listed:
    """One stored model as `nbo model list` shows it."""

    version: str
    live: bool
    challenger_share: float | None  # its share of customers while it is the challenger
    rolled_back: bool
    published_at: float
    metadata: dict[str, Any]


def list_models(client: redis.Redis, keys: Keys) -> list[Listed]:
    """The published models (the history, then rolled-back ones), oldest published first."""
    raw = client.get(keys.model_current)
    live = None if raw is None else text(raw)
    split = read_split(client, keys)
    history = [text(v) for v in client.lrange(keys.model_history, 0, -1)]
    retired = {text(v) for v in client.hkeys(keys.model_retired)} - set(history)
    out = []
    for version in [*history, *sorted(retired)]:
        rec = client.get(keys.model(version))
        record = json.loads(text(rec)) if rec else {}
        share = split.share if split is not None and split.version == version else None
        out.append(
            Listed(
                version,
                live == version,
                share,
                version in retired,
                float(record.get("published_at", 0.0)),
                record.get("metadata", {}),
            )
        )
    return sorted(out, key=lambda m: m.published_at)


def validation_sets(models: list[Listed]) -> set[tuple[str | None, Any]]:
    """The distinct validation sets the listed models' metrics come from: training data (by hash)
    and the size of its validation split."""
    return {(m.metadata.get("training_data_sha256"), m.metadata.get("metrics", {}).get("n_valid")) for m in models}


def artifact_from_record(record: dict[str, Any]) -> Artifact:
    rows, scores = _reference(record["reference"])
    return Artifact(
        record["version"], record["model"], InputSpec.from_json(record["inputs"]), rows, scores, record["metadata"]
    )
