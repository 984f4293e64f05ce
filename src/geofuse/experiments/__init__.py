"""Experiments over many runs: grouped k-fold CV ablation grids and hyperparameter search.

Heavy modules (training) are imported lazily; use the submodules directly:
:mod:`~geofuse.experiments.folds`, :mod:`~geofuse.experiments.grid`,
:mod:`~geofuse.experiments.runner` (study folder schema, ``load_cells``, ``results_frame``),
:mod:`~geofuse.experiments.ablation` (``run_ablation``) and
:mod:`~geofuse.experiments.search` (``run_search``).
"""
