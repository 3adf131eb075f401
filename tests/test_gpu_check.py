"""benchmarks/gpu_check.sh, the GPU readiness check: its CPU dry path runs every section
with tiny settings and writes each one, with its figures, to the one output file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
# section -> a figure its output must hold
SECTIONS = {
    "CUDA tests": "skipped",  # no GPU here: they skip, and say why
    "overhead": "losscli/s",
    "losses": "ours ms",
    "step profile": "ms/step",
    "seeds": "vectorised speed-up",
    "main job": "accuracy",
}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_dry_path_writes_every_section(tmp_path) -> None:
    out = tmp_path / "gpu-check.txt"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", str(out)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    text = out.read_text()
    parts = {p.split("\n", 1)[0]: p for p in text.split("\n== ")[1:]}
    for name, figure in SECTIONS.items():
        assert name in parts, f"no section {name!r} in\n{text}"
        assert f"-- {name}: ok" in parts[name], parts[name][-3000:]
        assert figure in parts[name], parts[name][-3000:]
    assert "-- main job --bf16: skipped" in parts["main job --bf16"]
    assert res.returncode == 0 and "all sections ok" in text.splitlines()[-1]
