"""Experiments: the demo, the method comparison and the reliability analysis.

Each is a set of functions that return records (dicts and dataclasses) and write artefacts where
asked; none parses arguments or prints (the ``sae-ts`` command line does that, in
:mod:`sae_ts.cli`). Import the submodules: :mod:`sae_ts.experiments.demo` (with
:mod:`~sae_ts.experiments.pipeline`, the estimate-and-fit step it shares),
:mod:`sae_ts.experiments.compare` (the method comparison on concept tasks) and
:mod:`sae_ts.experiments.reliability` (the reliability analysis on multiple-choice datasets).
"""
