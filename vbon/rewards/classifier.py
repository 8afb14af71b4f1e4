"""A Hugging Face sequence classifier as the reward: one logit (or its log-probability or
probability) picked by label name or index, e.g. the POSITIVE logit of a sentiment model."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from vbon.config import ClassifierReward
from vbon.errors import RewardError
from vbon.models.loading import resolve_model_path
from vbon.rewards.base import RewardScorer


class ClassifierScorer(RewardScorer):
    def __init__(self, cfg: ClassifierReward, device: str | torch.device = "cpu") -> None:
        path = resolve_model_path(cfg.name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=cfg.trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise RewardError(
                f"cannot load reward.name_or_path = {cfg.name_or_path!r}: "
                f"{str(exc).strip().splitlines()[0]}"
            ) from None
        self.model.to(device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.index = self._label_index(cfg.label)
        self.cfg = cfg

    def _label_index(self, label: str | int) -> int:
        labels = self.model.config.id2label
        if isinstance(label, str):
            by_name = {v: int(k) for k, v in labels.items()}
            if label not in by_name:
                raise RewardError(
                    f"reward.label = {label!r}: the classifier's labels are {sorted(by_name)}"
                )
            return by_name[label]
        if not 0 <= label < self.model.config.num_labels:
            raise RewardError(
                f"reward.label = {label}: must be in 0..{self.model.config.num_labels - 1}"
            )
        return label

    @torch.no_grad()
    def _score(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = (
            [p + c for p, c in zip(prompts, completions, strict=True)]
            if self.cfg.score_prompt
            else completions
        )
        out: list[float] = []
        for i in range(0, len(texts), self.cfg.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.cfg.batch_size],
                padding=True,
                truncation=True,
                max_length=self.cfg.max_length,
                return_tensors="pt",
            ).to(self.model.device)
            logits = self.model(**enc).logits.float()
            if self.cfg.output == "log_prob":
                logits = torch.log_softmax(logits, dim=-1)
            elif self.cfg.output == "prob":
                logits = torch.softmax(logits, dim=-1)
            out.extend(logits[:, self.index].tolist())
        return out
