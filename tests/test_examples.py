"""Each script in examples/ runs as a user would run it (in a scratch folder, the venv's `crossrank` on PATH) and
prints what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def run_example(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = EXAMPLES / name
    argv = [sys.executable, str(script)] if script.suffix == ".py" else ["bash", str(script)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return result


def test_rerank_a_list(tmp_path):
    lines = run_example("rerank_a_list.py", tmp_path).stdout.splitlines()
    assert len(lines) == 3 and "vaccine trains the immune system" in lines[0]  # the one answer ranks first


def test_index_and_search(tmp_path):
    output = run_example("index_and_search.sh", tmp_path, "idx").stdout.splitlines()
    assert output[0].startswith("indexed 7 documents from 3 files")
    assert output[1].startswith("segments: 8 window vectors of crossrank-minilm-l6-v2 stored for 7 passages")
    assert "long-documents.md#0" in output[2]  # the page about long documents answers the query about them
    filtered = json.loads(output[-1])
    assert filtered["results"][0]["doc_id"] == "vaccines"
    assert all(r["metadata"]["lang"] == "en" for r in filtered["results"])


@pytest.mark.shared
def test_evaluate_beir(tmp_path, shared_datasets):
    output = run_example("evaluate_beir.sh", tmp_path, "out").stdout
    assert "| run>>ce" in output and "trec-dl-2020 (test): 10 queries" in output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {s["name"] for s in results["systems"]} == {"run", "run>>ce"}
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.shared
def test_fine_tune(tmp_path, shared_datasets):
    output = run_example("fine_tune.sh", tmp_path, "models/ft").stdout
    assert json.loads(output.splitlines()[0])["steps"] == 4
    assert "| run>>ce:ft" in output and "| run>>ce:default" in output
    assert (tmp_path / "models" / "ft" / "model.safetensors").is_file()


def test_serve_and_call_with_cohere(tmp_path):
    output = run_example("serve_and_call_with_cohere.py", tmp_path).stdout
    assert output.startswith("best: document 0, relevance")  # Paris, not Berlin


def test_langchain_cohere_rerank(tmp_path):
    output = run_example("langchain_cohere_rerank.py", tmp_path).stdout
    assert output.startswith("best: paris.md, relevance")  # Paris, not Berlin, through LangChain and the server
