"""Feature logging: the rows a pipeline scored, written once to a file so training and reruns never rescore.
A TSV whose first line carries the feature set (name, version, definition) as JSON, then a header
`qid doc_id label <feature names...>`, then one row per (query, candidate); empty label = unjudged."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrank.ltr.features import FeatureSet
from crossrank.types import Candidate, SearchResult

MAGIC = "#crossrank-features"


@dataclass
class FeatureTable:
    """Rows grouped by query (contiguous, in candidate order): ids, feature matrix and labels (NaN = unknown)."""

    feature_set: FeatureSet
    qids: list[str]
    doc_ids: list[str]
    features: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.qids)
        if len(self.doc_ids) != n or self.features.shape != (n, len(self.feature_set.features)) or len(self.labels) != n:
            raise ValueError(
                f"feature table misaligned: {n} qids, {len(self.doc_ids)} doc ids, features {self.features.shape}, "
                f"{len(self.labels)} labels for {len(self.feature_set.features)} features")
        seen: set[str] = set()
        for i, qid in enumerate(self.qids):
            if i and qid != self.qids[i - 1]:
                if qid in seen:
                    raise ValueError(f"feature table: rows of query {qid!r} are not contiguous")
            seen.add(qid)

    @classmethod
    def from_results(cls, feature_set: FeatureSet, results: Sequence[SearchResult],
                     qrels: Mapping[str, Mapping[str, float]] | None = None) -> FeatureTable:
        """Extract features for every candidate of pipeline results (queries need ids), labelled from qrels
        (unjudged candidates of judged queries get 0; queries absent from qrels stay unlabelled)."""
        return cls.from_candidates(feature_set, [(r.query.id, r.query.text, r.candidates) for r in results], qrels)

    @classmethod
    def from_candidates(cls, feature_set: FeatureSet,
                        lists: Sequence[tuple[str | None, str, Sequence[Candidate]]],
                        qrels: Mapping[str, Mapping[str, float]] | None = None) -> FeatureTable:
        qids, doc_ids, blocks, labels = [], [], [], []
        for qid, text, candidates in lists:
            if qid is None:
                raise ValueError(f"query {text!r} has no id; feature rows need query ids")
            blocks.append(feature_set.extract(text, candidates))
            qids += [qid] * len(candidates)
            doc_ids += [c.doc_id for c in candidates]
            judged = None if qrels is None else qrels.get(qid)
            labels += [math.nan if judged is None else float(judged.get(c.doc_id, 0)) for c in candidates]
        features = np.concatenate(blocks) if blocks else np.zeros((0, len(feature_set.features)))
        return cls(feature_set, qids, doc_ids, features, np.array(labels, dtype=np.float64))

    def with_labels(self, labels: Mapping[str, Mapping[str, float]], unjudged: float = 0.0,
                    only_labelled: bool = False) -> FeatureTable:
        """A copy labelled from qrels or click labels. `only_labelled` keeps only rows the labels name (click
        labels exist only for results that were shown); otherwise queries without labels are dropped and
        unnamed rows of labelled queries get `unjudged`."""
        keep, new = [], []
        for i, (qid, doc) in enumerate(zip(self.qids, self.doc_ids)):
            judged = labels.get(qid)
            if judged is None or (only_labelled and doc not in judged):
                continue
            keep.append(i)
            new.append(float(judged.get(doc, unjudged)))
        if not keep:
            raise ValueError("no rows of the feature table have labels (do the query ids match?)")
        idx = np.array(keep)
        return FeatureTable(self.feature_set, [self.qids[i] for i in keep], [self.doc_ids[i] for i in keep],
                            self.features[idx], np.array(new))

    def subset(self, qids: set[str]) -> FeatureTable:
        return self._rows(np.array([i for i, q in enumerate(self.qids) if q in qids], dtype=int))

    def head(self, k: int, signal: str) -> FeatureTable:
        """Each query's top k by a logged signal's rank (e.g. rerank only the k results users were shown)."""
        name = f"rank:{signal}"
        if name not in self.feature_set.names:
            raise ValueError(f"{name} is not in {self.feature_set.key}: {self.feature_set.names}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        ranks = self.features[:, self.feature_set.names.index(name)]
        return self._rows(np.flatnonzero(ranks <= k))

    def _rows(self, idx: np.ndarray) -> FeatureTable:
        return FeatureTable(self.feature_set, [self.qids[i] for i in idx], [self.doc_ids[i] for i in idx],
                            self.features[idx], self.labels[idx])

    def select(self, names: Sequence[str], feature_set_name: str | None = None) -> FeatureTable:
        """A table of some columns only (ablations: e.g. LTR without the cross-encoder)."""
        missing = [n for n in names if n not in self.feature_set.names]
        if missing:
            raise ValueError(f"features {missing} are not in {self.feature_set.key}: {self.feature_set.names}")
        cols = [self.feature_set.names.index(n) for n in names]
        subset = FeatureSet(feature_set_name or f"{self.feature_set.name}-{len(names)}f", self.feature_set.version,
                            tuple(self.feature_set.features[c] for c in cols))
        return FeatureTable(subset, self.qids, self.doc_ids, self.features[:, cols], self.labels)

    def join(self, other: FeatureTable, name: str | None = None) -> FeatureTable:
        """Feature union: this table's rows with the other's extra columns, matched by (query, document), NaN
        where the other lacks a row — e.g. cross-encoder features logged in a separate (GPU or later) pass."""
        extra = [i for i, n in enumerate(other.feature_set.names) if n not in self.feature_set.names]
        if not extra:
            raise ValueError(f"{other.feature_set.key} adds no feature to {self.feature_set.key}")
        row_of = {(q, d): i for i, (q, d) in enumerate(zip(other.qids, other.doc_ids))}
        added = np.full((len(self.qids), len(extra)), np.nan)
        for i, key in enumerate(zip(self.qids, self.doc_ids)):
            j = row_of.get(key)
            if j is not None:
                added[i] = other.features[j, extra]
        feature_set = FeatureSet(name or f"{self.feature_set.name}+{other.feature_set.name}", 1,
                                 self.feature_set.features + tuple(other.feature_set.features[i] for i in extra))
        return FeatureTable(feature_set, self.qids, self.doc_ids, np.hstack([self.features, added]), self.labels)

    def groups(self) -> np.ndarray:
        """Rows per query, in order (LightGBM's `group`)."""
        sizes: list[int] = []
        for i, qid in enumerate(self.qids):
            if i and qid == self.qids[i - 1]:
                sizes[-1] += 1
            else:
                sizes.append(1)
        return np.array(sizes, dtype=int)

    def run(self, scores: np.ndarray) -> dict[str, dict[str, float]]:
        """query id → doc id → score, for evaluation and TREC run files."""
        out: dict[str, dict[str, float]] = {}
        for qid, doc, score in zip(self.qids, self.doc_ids, scores):
            out.setdefault(qid, {})[doc] = float(score)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            handle.write(f"{MAGIC}\t{self.feature_set.dumps()}\n")
            handle.write("\t".join(["qid", "doc_id", "label", *self.feature_set.names]) + "\n")
            for qid, doc, label, row in zip(self.qids, self.doc_ids, self.labels, self.features):
                cells = ["" if math.isnan(label) else repr(float(label))]
                cells += ["" if math.isnan(v) else repr(float(v)) for v in row]
                handle.write("\t".join([qid, doc, *cells]) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeatureTable:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline().rstrip("\n")
            if not first.startswith(MAGIC + "\t"):
                raise ValueError(f"{path} is not a crossrank feature log (first line must start with {MAGIC})")
            feature_set = FeatureSet.from_json(json.loads(first.split("\t", 1)[1]))
            header = handle.readline().rstrip("\n").split("\t")
            if header != ["qid", "doc_id", "label", *feature_set.names]:
                raise ValueError(f"{path}: header {header} does not match feature set {feature_set.key}")
            qids, docs, labels, rows = [], [], [], []
            for number, line in enumerate(handle, start=3):
                cells = line.rstrip("\n").split("\t")
                if len(cells) != len(header):
                    raise ValueError(f"{path}:{number}: {len(cells)} columns, expected {len(header)}")
                qids.append(cells[0])
                docs.append(cells[1])
                try:
                    values = [math.nan if cell == "" else float(cell) for cell in cells[2:]]
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: {exc}") from exc
                labels.append(values[0])
                rows.append(values[1:])
        features = np.array(rows, dtype=np.float64).reshape(len(rows), len(feature_set.features))
        return cls(feature_set, qids, docs, features, np.array(labels, dtype=np.float64))
