"""The docs' result tables, generated from the run records in ``docs/results/`` (``isacir-lab render``).

- :mod:`.records`: the run records, typed, read and checked once;
- :mod:`.shapes`, :mod:`.feedback`, :mod:`.benches`: one module of tables per kind of run;
- :mod:`.render`: which block goes where, and writing or checking the pages.
"""

from .benches import (
    ann_table,
    backbones_csv,
    backbones_table,
    domain_table,
    edge_int8_table,
    ingest_table,
    load_test_table,
    pilot_versions_table,
    runtimes_table,
    shapes_ann_table,
    soak_table,
)
from .feedback import (
    feedback_deploy_table,
    feedback_frontier_table,
    feedback_guard_table,
    feedback_intervals_table,
    feedback_recipes_table,
    feedback_replicates_table,
    feedback_reruns_table,
    feedback_table,
    feedback_tradeoff_table,
    feedback_tuned_table,
    load_feedback_runs,
    load_replicates,
    load_reruns,
    load_training_seeds,
    load_variants,
)
from .paths import RESULTS, ROOT
from .render import main, render, render_docs
from .shapes import goals_table, per_seed_csv, results_page, summary, summary_csv, summary_table

__all__ = [
    "RESULTS",
    "ROOT",
    "ann_table",
    "backbones_csv",
    "backbones_table",
    "domain_table",
    "edge_int8_table",
    "feedback_deploy_table",
    "feedback_frontier_table",
    "feedback_guard_table",
    "feedback_intervals_table",
    "feedback_recipes_table",
    "feedback_replicates_table",
    "feedback_reruns_table",
    "feedback_table",
    "feedback_tradeoff_table",
    "feedback_tuned_table",
    "goals_table",
    "ingest_table",
    "load_feedback_runs",
    "load_replicates",
    "load_reruns",
    "load_test_table",
    "load_training_seeds",
    "load_variants",
    "main",
    "per_seed_csv",
    "pilot_versions_table",
    "render",
    "render_docs",
    "results_page",
    "runtimes_table",
    "shapes_ann_table",
    "soak_table",
    "summary",
    "summary_csv",
    "summary_table",
]
