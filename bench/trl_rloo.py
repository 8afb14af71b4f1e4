"""TRL's side of `bench/train_vs_trl.py`: TRL's RLOOTrainer on the given model, prompts and VADER
reward, timed per step. It runs in TRL's own environment (`make bench-trl-env`), so it imports
neither vbon nor vbon's pins, and prints one JSON line with its timings.

    .venv-trl/bin/python bench/trl_rloo.py '{"model": ..., "prompts": [...], ...}'
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import RLOOConfig, RLOOTrainer
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

ANALYZER = SentimentIntensityAnalyzer()


def vader(completions: list[str], **_) -> list[float]:
    """The VADER compound score of each completion, as vbon's `reward.kind: vader`."""
    return [ANALYZER.polarity_scores(c)["compound"] for c in completions]


class StepClock(TrainerCallback):
    """Wall time of each optimizer step and the completion tokens it trained on."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append({"step_s": time.perf_counter() - self._start})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs and self.steps:
            self.steps[-1]["mean_length"] = logs["completions/mean_length"]


def top_layers_only(model: torch.nn.Module, k: int) -> None:
    """Freeze everything but the top k decoder blocks (vbon's `trainable: top_layers`)."""
    model.requires_grad_(False)
    for block in model.model.layers[-k:]:
        block.requires_grad_(True)


def main(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    if spec["trainable"] == "top_layers":
        top_layers_only(model, spec["top_layers"])
    rows = spec["prompts_per_step"] * spec["samples_per_prompt"]
    with tempfile.TemporaryDirectory() as out:
        args = RLOOConfig(
            output_dir=out,
            use_cpu=True,
            per_device_train_batch_size=rows,
            num_generations=spec["samples_per_prompt"],
            max_completion_length=spec["max_new_tokens"],
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            gradient_checkpointing=False,  # vbon does not checkpoint activations either
            lr_scheduler_type="constant",
            beta=spec["beta"],
            learning_rate=spec["learning_rate"],
            max_steps=spec["steps"],
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
        )
        clock = StepClock()
        trainer = RLOOTrainer(
            model=model,
            reward_funcs=vader,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": spec["prompts"]}),
            processing_class=tokenizer,
            callbacks=[clock],
        )
        trainer.train()
    timed = clock.steps[spec["warmup"] :]
    tokens = sum(s.get("mean_length", spec["max_new_tokens"]) * rows for s in timed)
    seconds = sum(s["step_s"] for s in timed)
    return {"step_s": seconds / len(timed), "tokens_per_s": tokens / seconds, "steps": clock.steps}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
