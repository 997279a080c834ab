"""Judged IR data in its standard files: BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv,
runs/*.trec) and TREC run/qrels files, read in place and written back in TREC format.

A neutral module (it imports only `types`): evaluation, training, LTR and the benchmarks all read judged data."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from crossrank.types import Document, best_first

Qrels = dict[str, dict[str, int]]  # query id → doc id → graded relevance
Run = dict[str, dict[str, float]]  # query id → doc id → score

DATASETS_ENV = "CROSSRANK_DATASETS"
JUDGMENTS = "judgments"  # the split name of an index's judgments ("INDEX_DIR:judgments[@JUDGE]")


def datasets_root() -> Path:
    """$CROSSRANK_DATASETS, else ../shared/datasets beside the working directory's repository."""
    if os.environ.get(DATASETS_ENV):
        return Path(os.environ[DATASETS_ENV])
    return Path.cwd().parent / "shared" / "datasets"


def resolve_dataset(name_or_path: str | os.PathLike[str]) -> Path:
    """A dataset folder by path, or by name under datasets_root() (e.g. "scifact")."""
    path = Path(name_or_path)
    if (path / "corpus.jsonl").is_file() or (path / "queries.jsonl").is_file():
        return path
    candidate = datasets_root() / str(name_or_path)
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(f"no BEIR dataset at {path} or {candidate} (set ${DATASETS_ENV})")


def iter_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc


def read_corpus(path: Path) -> dict[str, Document]:
    return {
        str(row["_id"]): Document(text=row.get("text") or "", title=row.get("title") or "", id=str(row["_id"]),
                                  metadata=row.get("metadata") or {})
        for row in iter_jsonl(path)
    }


def read_queries(path: Path) -> dict[str, str]:
    return {str(row["_id"]): row["text"] for row in iter_jsonl(path)}


def read_qrels(path: Path) -> Qrels:
    """BEIR qrels TSV (query-id, corpus-id, score, with header) or TREC qrels (qid 0 docid rel)."""
    qrels: Qrels = defaultdict(dict)
    with path.open(encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle if line.strip()]
    if not lines:
        return {}
    if "\t" in lines[0] and not lines[0].split("\t")[-1].lstrip("-").isdigit():
        lines = lines[1:]  # BEIR header
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) == 3:
            qid, docid, rel = parts
        elif len(parts) == 4:
            qid, _, docid, rel = parts
        else:
            raise ValueError(f"{path}: line {number} is neither BEIR (3 columns) nor TREC qrels (4): {line!r}")
        qrels[qid][docid] = int(float(rel))
    return dict(qrels)


def read_run(path: Path) -> Run:
    """TREC run: `qid Q0 docid rank score tag`, one line per candidate.

    Each query's documents come in the file's rank order, so `ranked` breaks score ties by the rank column: a run
    of equal scores (a candidate list, WikiQA style) keeps its order, where trec_eval would reorder it by id.
    (ir_measures.read_trec_run drops the rank column, which is why this reader is our own.)
    """
    rows: dict[str, list[tuple[float, int, str, float]]] = defaultdict(list)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                rows[parts[0]].append((float(parts[3]), number, parts[2], float(parts[4])))
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{path}: line {number} is not a TREC run line: {line.strip()!r}") from exc
    return {qid: {doc: score for _, _, doc, score in sorted(lines)} for qid, lines in rows.items()}


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Doc ids best first: score descending, ties in the mapping's order (`crossrank.types.best_first`)."""
    return best_first(scores, scores.__getitem__)


def write_run(run: Mapping[str, Mapping[str, float]], path: Path, tag: str = "crossrank") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for qid in sorted(run):
            for rank, docid in enumerate(ranked(run[qid]), start=1):
                handle.write(f"{qid} Q0 {docid} {rank} {run[qid][docid]:.6f} {tag}\n")


@dataclass
class BeirDataset:
    """A BEIR folder, loaded lazily: the corpus is only read when asked for. `source_index` is the crossrank
    index a folder was materialised from (`crossrank.judgments.judged_dataset`): evaluation retrieves from that
    index itself rather than re-indexing the corpus."""

    path: Path
    split: str = "test"
    source_index: Path | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.path = resolve_dataset(self.path)
        self.name = self.source_index.name if self.source_index else self.path.name
        if not self.qrels_path.is_file():
            splits = sorted(p.stem for p in (self.path / "qrels").glob("*.tsv"))
            raise FileNotFoundError(f"{self.name} has no split {self.split!r}; it has {splits}")

    @property
    def qrels_path(self) -> Path:
        return self.path / "qrels" / f"{self.split}.tsv"

    @cached_property
    def corpus(self) -> dict[str, Document]:
        return read_corpus(self.path / "corpus.jsonl")

    @cached_property
    def all_queries(self) -> dict[str, str]:
        return read_queries(self.path / "queries.jsonl")

    @cached_property
    def qrels(self) -> Qrels:
        return read_qrels(self.qrels_path)

    @cached_property
    def queries(self) -> dict[str, str]:
        """The queries of this split (those with judgments)."""
        return {qid: text for qid, text in self.all_queries.items() if qid in self.qrels}

    def run(self, name: str) -> Run:
        """A shipped first-stage run: `runs/<name>.trec` (e.g. "bm25-top100", "candidates-train")."""
        path = self.path / "runs" / f"{name}.trec"
        if not path.is_file():
            available = sorted(p.stem for p in (self.path / "runs").glob("*.trec"))
            raise FileNotFoundError(f"{self.name} has no run {name!r}; it has {available}")
        return read_run(path)

    @property
    def runs(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "runs").glob("*.trec"))


def parse_dataset_spec(spec: str, default_split: str = "test") -> BeirDataset:
    """"scifact:train" or "../shared/datasets/wikiqa:dev" → a BeirDataset; "INDEX_DIR:judgments" (every judge)
    or "INDEX_DIR:judgments@alice" (one judge) → the judgments recorded in a crossrank index, as a BEIR folder
    (`crossrank.judgments.judged_dataset`)."""
    path, _, split = spec.rpartition(":") if ":" in spec else (spec, "", default_split)
    split = split or default_split
    qrels, _, judge = split.partition("@")
    if qrels == JUDGMENTS:
        from crossrank.judgments import is_index, judged_dataset

        if is_index(path):
            return judged_dataset(path, judge or None)
    return BeirDataset(Path(path), split)


def write_qrels(qrels: Qrels, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["query-id", "corpus-id", "score"])
        for qid in sorted(qrels):
            for docid, rel in sorted(qrels[qid].items()):
                writer.writerow([qid, docid, rel])

