"""The run contract: what every stage of the harness shares, at the bottom of the house.

* :mod:`~harness.contract.iteration`: the typed per-iteration report, its hyperparameters,
  metrics and phases;
* :mod:`~harness.contract.sink`: the interface every consumer of trial events implements;
* :mod:`~harness.contract.record` and :mod:`~harness.contract.events`: the append-only event
  log and the run record folded from it;
* :mod:`~harness.contract.rundir`: a run folder's layout;
* :mod:`~harness.contract.errors`: bad input, told in one line.

It imports nothing else of harness (tests/test_architecture.py checks it).
"""
