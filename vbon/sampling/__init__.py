"""Stage 1: M reference samples per prompt, scored, on a pool of Ray actors."""
