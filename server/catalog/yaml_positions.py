"""Load YAML while remembering where each value sits, so errors can name file, line and column."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class YamlSyntaxError(ValueError):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.line = line
        self.column = column
        self.message = message


def load_with_positions(text: str) -> tuple[Any, dict[Path_, tuple[int, int]]]:
    """Parse YAML; return the data and a map from each value's path to its 1-based (line, column)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(line, col, str(err.problem or err.context or "invalid YAML")) from err
    except yaml.YAMLError as err:
        raise YamlSyntaxError(1, 1, str(err)) from err
    except RecursionError as err:  # the composer recurses once per level of nesting
        raise YamlSyntaxError(1, 1, "nested too deeply") from err
    positions: dict[Path_, tuple[int, int]] = {}
    if root is None:
        return None, positions
    constructor = yaml.SafeLoader(text)
    try:
        data = _build(root, (), positions, constructor)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(line, col, str(err.problem)) from err
    except RecursionError as err:
        raise YamlSyntaxError(1, 1, "nested too deeply") from err
    finally:
        constructor.dispose()
    return data, positions


def _build(
    node: yaml.Node,
    path: Path_,
    positions: dict[Path_, tuple[int, int]],
    c: yaml.SafeLoader,
    within: frozenset[int] = frozenset(),
) -> Any:
    # a mapping entry is located at its key (set by the caller), anything else at its start
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if id(node) in within:  # `a: &x [*x]`: an alias inside its own anchor would never end
        raise yaml.MarkedYAMLError(problem="an alias to a value that contains itself", problem_mark=node.start_mark)
    within = within | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, c)
            if not isinstance(key, Hashable):
                raise yaml.MarkedYAMLError(
                    problem="a mapping key must be a plain value, not a list or mapping",
                    problem_mark=key_node.start_mark,
                )
            if key in out:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
            positions[(*path, str(key))] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, (*path, str(key)), positions, c, within)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), positions, c, within) for i, item in enumerate(node.value)]
    return _construct(node, c)


def _construct(node: yaml.Node, c: yaml.SafeLoader) -> Any:
    try:
        return c.construct_object(node, deep=True)
    # PyYAML's scalar constructors fail on malformed values (`2027-02-30`, `!!int 0x`, `!!bool
    # maybe`) with whatever Python raised: ValueError, IndexError, KeyError, AttributeError, ...
    except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as err:
        tag = node.tag.rsplit(":", 1)[-1]
        raise yaml.MarkedYAMLError(problem=f"invalid {tag} value: {err}", problem_mark=node.start_mark) from err


def position_of(path: Path_, positions: dict[Path_, tuple[int, int]]) -> tuple[int, int]:
    """Position of `path`, or of its nearest ancestor that exists (e.g. for a missing field)."""
    while path not in positions and path:
        path = path[:-1]
    return positions.get(path, (1, 1))


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
