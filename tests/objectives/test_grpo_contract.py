"""The built-in grpo objective runs the shared objective contract."""

from dance.testing.objective_contract import ObjectiveContract


class TestGRPO(ObjectiveContract):
    objective = "grpo"


class TestGRPOWithKLAndRecomputedLogProbs(ObjectiveContract):
    objective = "grpo"
    options = {"kl_coef": 0.1, "old_log_probs": "recompute", "clip_range": 0.2}
