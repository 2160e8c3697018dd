"""Where a catalog's problems are collected: each with its path, line and column, so a publish
reports all of them at once."""

from __future__ import annotations

from server.catalog.rules import Rule, RuleError, compile_rule
from server.catalog.spec import CHANNEL_NAMES, CatalogError
from server.catalog.yaml_positions import Path_, format_path, position_of
from server.domain import Channel
from server.features.schema import FeatureSchema


class Checker:
    """Every problem found in one catalog, each placed at its line and column."""

    def __init__(self, positions: dict[Path_, tuple[int, int]]) -> None:
        self.positions = positions
        self.errors: list[CatalogError] = []

    def add(self, path: Path_, message: str, column_offset: int = 0) -> None:
        line, col = position_of(path, self.positions)
        self.errors.append(CatalogError(format_path(path), line, col + column_offset, message))

    def channel(self, path: Path_, name: str) -> Channel | None:
        if name in CHANNEL_NAMES:
            return Channel(name)
        self.add(path, f'unknown channel "{name}" (channels: {", ".join(CHANNEL_NAMES)})')
        return None

    def rule(self, path: Path_, source: str, schema: FeatureSchema, ctx: frozenset[str]) -> Rule | None:
        try:
            return compile_rule(source, schema, ctx)
        except RuleError as err:
            # column of the rule text in the YAML, when the rule is written plainly on its line
            self.add(path, f"col {err.column}: {err.message}")
            return None
