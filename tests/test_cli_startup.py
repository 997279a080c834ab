"""The CLI starts without the heavy libraries: `--help`, `--version` and the command table import no torch,
transformers or onnxruntime (they load inside the commands that need them)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from crossrank import __version__
from crossrank.cli import app


def test_importing_the_cli_loads_no_heavy_library():
    probe = ("import sys, crossrank.cli; "
             "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'tokenizers') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"crossrank {__version__}"
