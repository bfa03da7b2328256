"""Experiments: the demo, the method comparison and the reliability analysis.

Each is a set of functions that return records (dicts and dataclasses) and write artefacts where
asked; none parses arguments or prints (the ``sae-ts`` command line does that, in
:mod:`sae_ts.cli`). Import the submodules: :mod:`sae_ts.experiments.demo`,
:mod:`sae_ts.experiments.comparison` (with its parts ``compare_tasks``, ``compare_generation``,
``compare_judges`` and ``compare_stats``), :mod:`sae_ts.experiments.reliability` (items, splits,
statistics), :mod:`sae_ts.experiments.reliability_steering` (steering positions, answer curves,
vectors), :mod:`sae_ts.experiments.reliability_report` (whole datasets, JSON) and
:mod:`sae_ts.experiments.reliability_plots`.
"""
