"""Reading the dashboard page's numbers out of a DOM that chromium dumped, and formatting values
the way the page's script does (JavaScript's toFixed and toLocaleString), to compare texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser

DASH = "–"


def js_fixed(value: float, places: int) -> str:
    """Number.prototype.toFixed: the exact binary value, ties away from zero (for positives)."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def js_int(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def js_pct(value: float | None) -> str:
    return DASH if value is None else js_fixed(value * 100, 1) + " %"


@dataclass
class DomNumbers:
    numbers: dict[str, tuple[str, str]] = field(default_factory=dict)  # data-k -> (data-v, text)
    loaded: bool = False
    at: int = 0
    spark: list[int] = field(default_factory=list)

    def number(self, key: str) -> tuple[str, str]:
        assert key in self.numbers, f"the page shows no {key}; it shows {sorted(self.numbers)}"
        return self.numbers[key]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found = DomNumbers()
        self._open: list[tuple[str, str, str, list[str]]] = []  # (tag, key, value, texts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.found.loaded = a.get("data-loaded") == "1"
            self.found.at = int(a.get("data-at") or 0)
        if tag == "svg" and a.get("id") == "spark":
            self.found.spark = [int(v) for v in a.get("data-values", "").split(",") if v]
        if "data-k" in a:
            self._open.append((tag, a["data-k"], a.get("data-v", ""), []))

    def handle_data(self, data: str) -> None:
        for _, _, _, texts in self._open:
            texts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            _, key, value, texts = self._open.pop()
            self.found.numbers[key] = (value, "".join(texts).strip())


def read_dom(html: str) -> DomNumbers:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.found
