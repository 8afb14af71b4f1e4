"""Ray Job Submission: send a workflow to a cluster, follow its status and logs.

The job's runtime environment carries the project folder (the `vbon` package and the workflow
file) as its working directory; the cluster's nodes must have vbon's dependencies installed
(see cluster/). The entry point is `python -m vbon.cli run WORKFLOW --no-serve`.
"""

from __future__ import annotations

from pathlib import Path

from vbon.config import load_workflow
from vbon.errors import ConfigError, VbonError

PROJECT = Path(__file__).resolve().parent.parent
EXCLUDES = [
    ".git",
    ".venv",
    ".vbon-cache",
    "runs",
    "bench/results",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
]


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise VbonError(
            f"the Ray cluster at {address} requires a token: export RAY_AUTH_MODE=token and put "
            "the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        ) from None
    except (ConnectionError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VbonError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def submit(workflow: Path, address: str, from_stage: str | None = None) -> str:
    """Submit `workflow` (a file inside the project folder) as a Ray job; its id."""
    load_workflow(workflow)  # a broken workflow fails here, not on the cluster
    path = Path(workflow).resolve()
    if not path.is_relative_to(PROJECT):
        raise ConfigError(
            f"{workflow}: a submitted workflow must live inside {PROJECT} (e.g. workflows/) "
            "so that it travels with the project"
        )
    entry = f"python -m vbon.cli run {path.relative_to(PROJECT)} --no-serve"
    if from_stage:
        entry += f" --from {from_stage}"
    runtime_env = {"working_dir": str(PROJECT), "excludes": EXCLUDES}
    return _client(address).submit_job(entrypoint=entry, runtime_env=runtime_env)


def status(job_id: str, address: str) -> str:
    return str(_client(address).get_job_status(job_id).value)


def logs(job_id: str, address: str) -> str:
    return _client(address).get_job_logs(job_id)


async def follow(job_id: str, address: str) -> None:
    """Print the job's log as it grows, until the job ends."""
    async for chunk in _client(address).tail_job_logs(job_id):
        print(chunk, end="", flush=True)
