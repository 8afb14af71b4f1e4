"""`vbon submit` checks the workflow before it reaches a cluster. Submitting to a real cluster
(its job server, `vbon status` and `vbon logs`), with a node lost mid-job, is in
test_multinode.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_submit_rejects_a_broken_workflow_before_sending(tmp_path: Path) -> None:
    bad = ROOT / "workflows" / f".test-bad-{os.getpid()}.yaml"
    bad.write_text("n: 1\n")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vbon.cli", "submit", str(bad), "--address", "http://127.0.0.1:9"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2 and "n = 1" in proc.stderr
    finally:
        bad.unlink()
