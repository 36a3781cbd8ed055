"""The quality harness behind `entropyinfer eval`: run methods on tasks (`runner`, `harness`), keep resumable
results (`results`), and render tables, plots (`report`) and entropy heatmaps (`profile_report`)."""

from .harness import evaluate, plan_runs
from .results import ResultStore
from .runner import Outcome, run_sample

__all__ = ["Outcome", "ResultStore", "evaluate", "plan_runs", "run_sample"]
