"""A reward model served elsewhere, over HTTP.

Request:  POST url  {"prompts": [...], "completions": [...]}
Response: 200       {"rewards": [float, ...]}   (same length)
Connection errors, timeouts and 5xx/429 answers are retried with exponential backoff; any other
answer is an error at once.
"""

from __future__ import annotations

import time

import httpx

from vbon.config import HttpReward
from vbon.errors import RewardError
from vbon.rewards.base import RewardScorer


class HttpScorer(RewardScorer):
    def __init__(self, cfg: HttpReward) -> None:
        self.cfg = cfg
        self._client = httpx.Client(timeout=cfg.timeout_s)

    def _score(self, prompts: list[str], completions: list[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(prompts), self.cfg.batch_size):
            batch = slice(i, i + self.cfg.batch_size)
            out.extend(self._post({"prompts": prompts[batch], "completions": completions[batch]}))
        return out

    def _post(self, payload: dict) -> list[float]:
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(min(0.1 * 2**attempt, 5.0))
            try:
                resp = self._client.post(self.cfg.url, json=payload)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code != 200:
                raise RewardError(
                    f"reward server {self.cfg.url} answered HTTP {resp.status_code}: {resp.text[:200]}"
                )
            return self._parse(resp, len(payload["prompts"]))
        raise RewardError(
            f"reward server {self.cfg.url} failed after {self.cfg.max_retries + 1} tries ({last}); "
            "check reward.url, or raise reward.timeout_s / reward.max_retries"
        )

    def _parse(self, resp: httpx.Response, expected: int) -> list[float]:
        try:
            rewards = resp.json()["rewards"]
            values = [float(r) for r in rewards]
        except (ValueError, KeyError, TypeError):
            raise RewardError(
                f'reward server {self.cfg.url} must answer {{"rewards": [float, ...]}}, '
                f"got {resp.text[:200]!r}"
            ) from None
        if len(values) != expected:
            raise RewardError(
                f"reward server {self.cfg.url} returned {len(values)} rewards for {expected} completions"
            )
        return values
