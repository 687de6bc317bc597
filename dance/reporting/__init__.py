"""What a run reports: metrics logs, evaluation files, summary.json and plots."""
