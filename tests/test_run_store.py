"""URI run folders (a real `file://` file system through pyarrow): a push cut short by a kill is
never pulled back as a complete stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from vbon.run_store import pull, push, staging_dir

PUSH = "import sys; from pathlib import Path; from vbon.run_store import push; " \
    "push(sys.argv[1], 'wf', Path(sys.argv[2]), 'samples')"  # fmt: skip


def _stage(folder: Path, files: int, status: str = "complete") -> None:
    (folder / "data").mkdir(parents=True)
    for i in range(files):
        (folder / "data" / f"part-{i:05d}.parquet").write_bytes(os.urandom(2048))
    (folder / "manifest.json").write_text(json.dumps({"status": status, "config_hash": "k"}))


def test_a_complete_stage_round_trips_and_an_unfinished_one_is_not_pulled(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'remote'}"
    _stage(tmp_path / "run" / "samples", 5)
    _stage(tmp_path / "run" / "train", 2, status="running")
    push(uri, "wf", tmp_path / "run", "samples")
    push(uri, "wf", tmp_path / "run", "train")
    try:
        local = pull(uri, "wf", ["samples", "train"])
        assert sorted(p.name for p in (local / "samples" / "data").iterdir()) == [
            f"part-{i:05d}.parquet" for i in range(5)
        ]
        assert (local / "samples" / "manifest.json").read_text() == (
            tmp_path / "run" / "samples" / "manifest.json"
        ).read_text()
        assert not (local / "train").exists(), "a stage that never finished was pulled"
    finally:
        shutil.rmtree(staging_dir(uri, "wf"), ignore_errors=True)


def test_a_push_killed_midway_leaves_a_stage_that_the_next_run_redoes(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'remote'}"
    _stage(tmp_path / "run" / "samples", 4000)
    remote = tmp_path / "remote" / "wf" / "samples"
    proc = subprocess.Popen([sys.executable, "-c", PUSH, uri, str(tmp_path / "run")])
    deadline, seen = time.monotonic() + 60, 0
    while proc.poll() is None and time.monotonic() < deadline:
        seen = len(list((remote / "data").glob("*"))) if (remote / "data").is_dir() else 0
        if seen:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 0 < seen < 4000, f"the push was not caught midway ({seen} of 4000 files)"
    assert not (remote / "manifest.json").exists(), "an unfinished push left a manifest"
    try:
        local = pull(uri, "wf", ["samples"])
        assert not (local / "samples").exists(), "a partial stage was pulled as if complete"
    finally:
        shutil.rmtree(staging_dir(uri, "wf"), ignore_errors=True)
