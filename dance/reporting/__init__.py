"""What a run reports and where: run folders under ``runs/``, metrics logs (JSONL, TensorBoard),
grids, the before/after comparison of an evaluation, summary.json and plots."""
