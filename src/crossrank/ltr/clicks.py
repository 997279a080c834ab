"""The click-log format: one impression per JSON line — the query, the list shown (position = order, from 1),
the clicked ids with dwell seconds, and a timestamp. Real traffic and the simulator write the same file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DWELL_THRESHOLD = 30.0  # seconds; the classic "satisfied click" cut (Fox et al., 2005)


@dataclass(frozen=True)
class Impression:
    """One result page shown to one user: `shown` best first, `clicks` maps a shown id to its dwell (None = unknown)."""

    query_id: str
    shown: tuple[str, ...]
    clicks: Mapping[str, float | None] = field(default_factory=dict)
    query: str = ""
    timestamp: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.query_id, str) or not self.query_id:
            raise ValueError("impression: query_id must be a non-empty string")
        if not self.shown:
            raise ValueError(f"impression {self.query_id}: the shown list is empty")
        if len(set(self.shown)) != len(self.shown):
            raise ValueError(f"impression {self.query_id}: the shown list repeats a document")
        for doc_id, dwell in self.clicks.items():
            if doc_id not in self.shown:
                raise ValueError(f"impression {self.query_id}: clicked {doc_id!r} was not shown")
            if dwell is not None and not (dwell >= 0):
                raise ValueError(f"impression {self.query_id}: dwell for {doc_id!r} must be >= 0, got {dwell}")

    def position(self, doc_id: str) -> int:
        """1-based position of a shown document."""
        return self.shown.index(doc_id) + 1

    def satisfied_clicks(self, dwell_threshold: float | None = DEFAULT_DWELL_THRESHOLD) -> list[str]:
        """Clicked ids whose dwell reaches the threshold (all clicks when the threshold is None or dwell unknown)."""
        return [
            doc for doc, dwell in self.clicks.items()
            if dwell_threshold is None or dwell is None or dwell >= dwell_threshold
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "query": self.query,
            "shown": list(self.shown),
            "clicks": [{"id": doc, "dwell": dwell} for doc, dwell in self.clicks.items()],
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Impression:
        if not isinstance(row, Mapping):
            raise ValueError(f"an impression must be a JSON object, got {type(row).__name__}")
        missing = [key for key in ("query_id", "shown") if key not in row]
        if missing:
            raise ValueError(f"impression is missing {missing}")
        shown = row["shown"]
        if not isinstance(shown, list) or not all(isinstance(doc, str) for doc in shown):
            raise ValueError("impression: 'shown' must be a list of document id strings")
        clicks: dict[str, float | None] = {}
        for click in row.get("clicks") or []:
            if not isinstance(click, Mapping) or not isinstance(click.get("id"), str):
                raise ValueError(f"impression: each click needs a string 'id', got {click!r}")
            dwell = click.get("dwell")
            clicks[click["id"]] = None if dwell is None else float(dwell)
        return cls(query_id=str(row["query_id"]), shown=tuple(shown), clicks=clicks,
                   query=str(row.get("query") or ""), timestamp=float(row.get("timestamp") or 0.0))


def write_click_log(impressions: Iterable[Impression], path: Path) -> int:
    """Write impressions as JSON lines; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for impression in impressions:
            handle.write(json.dumps(impression.to_json()) + "\n")
            count += 1
    return count


def iter_click_log(path: Path) -> Iterator[Impression]:
    """Read a click log, naming the line of any malformed record."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Impression.from_json(json.loads(line))
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc


def read_click_log(path: Path) -> list[Impression]:
    return list(iter_click_log(path))
