"""Metadata filters → SQL over the passage store: equality (a list means any of) and ranges.

    {"lang": "en"}                                   equality
    {"lang": ["en", "de"]}                           any of
    {"timestamp": {"gte": "2024-01-01", "lt": "2025-01-01"}}   range (gt, gte, lt, lte, ne)

Ranges compare values as stored: numbers numerically, ISO-8601 timestamps as strings (which orders them).
A field no document has is an error, not an empty result, so typos are caught.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ne": "!="}
COLUMNS = {"doc_id": "doc_id", "title": "title"}
SCALARS = (str, int, float, bool)


class UnknownFieldError(ValueError):
    """A filter names a field no document in the index has."""


def _column(field: str) -> tuple[str, list[Any]]:
    if field in COLUMNS:
        return COLUMNS[field], []
    return "json_extract(metadata, ?)", ['$."' + field.replace('"', '\\"') + '"']


def _scalar(field: str, value: Any) -> Any:
    if not isinstance(value, SCALARS):
        raise ValueError(f"filter on {field!r}: values must be strings, numbers or booleans, got {type(value).__name__}")
    return value


def filter_sql(filters: Mapping[str, Any], known_fields: Collection[str]) -> tuple[str, list[Any]]:
    """A SQL condition (AND of all fields) and its parameters; raises ValueError naming what is wrong."""
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a mapping of field → condition, got {type(filters).__name__}")
    clauses, params = [], []
    for field, condition in filters.items():
        if not isinstance(field, str) or (field not in COLUMNS and field not in known_fields):
            known = sorted({*COLUMNS, *known_fields})
            raise UnknownFieldError(f"unknown filter field {field!r}; fields in this index: {', '.join(known)}")
        column, column_params = _column(field)
        if isinstance(condition, Mapping):
            if not condition:
                raise ValueError(f"filter on {field!r}: empty range")
            for op, value in condition.items():
                if op not in OPERATORS:
                    raise ValueError(f"filter on {field!r}: unknown operator {op!r}; use one of {sorted(OPERATORS)}")
                clauses.append(f"{column} {OPERATORS[op]} ?")
                params += [*column_params, _scalar(field, value)]
        elif isinstance(condition, (list, tuple, set, frozenset)):
            values = [_scalar(field, v) for v in condition]
            if not values:
                raise ValueError(f"filter on {field!r}: empty list of values")
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += [*column_params, *values]
        else:
            clauses.append(f"{column} = ?")
            params += [*column_params, _scalar(field, condition)]
    return " AND ".join(clauses) or "1", params
