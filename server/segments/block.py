"""The catalog `segments:` block of a suggestion, alone or merged into a catalog file."""

from __future__ import annotations

from typing import Any

import yaml

from server.segments.load import SegmentsError
from server.segments.suggest import DISJOINT_NOTE, Suggestion


def _segments(suggestion: Suggestion) -> dict[str, dict[str, str]]:
    return {s.name: {"rule": s.rule, "description": s.description()} for s in suggestion.segments if s.rule is not None}


def _header(suggestion: Suggestion) -> str:
    o = suggestion.options
    sample = f", a seeded sample of {suggestion.customers:,}" if o.sample is not None else ""
    lines = [
        f"suggested by `nbo segments suggest --k {o.k} --method {o.method} --depth {o.depth} --seed {o.seed}`",
        f"from {suggestion.total:,} customers{sample} (feature schema v{suggestion.schema_version}); "
        f"rule fidelity {suggestion.accuracy:.3f}",
        DISJOINT_NOTE,
    ]
    return "".join(f"# {line}\n" for line in lines)


def segments_yaml(suggestion: Suggestion) -> str:
    """A `segments:` block to paste into (or merge with) a catalog; segments without a rule are left out."""
    body = yaml.safe_dump({"segments": _segments(suggestion)}, sort_keys=False, width=10_000, allow_unicode=True)
    return _header(suggestion) + body


def merged_catalog(catalog_text: str, suggestion: Suggestion) -> str:
    """The catalog with the suggested segments added to its own (its comments are not kept).

    Raises SegmentsError when the catalog is not a YAML mapping or already has a segment of a
    suggested name (choose another --prefix).
    """
    try:
        doc: Any = yaml.safe_load(catalog_text)
    except yaml.YAMLError as err:
        raise SegmentsError(f"the catalog is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise SegmentsError("the catalog is not a YAML mapping")
    existing = doc.get("segments") or {}
    if not isinstance(existing, dict):
        raise SegmentsError("the catalog's `segments` is not a mapping")
    new = _segments(suggestion)
    if clash := sorted(set(existing) & set(new)):
        raise SegmentsError(f"the catalog already has segment(s) {', '.join(clash)}: choose another --prefix")
    doc["segments"] = {**existing, **new}
    return _header(suggestion) + yaml.safe_dump(doc, sort_keys=False, width=10_000, allow_unicode=True)
