"""The schedule simulator: what a strategy's run would cost on a cluster the harness cannot run on.

A discrete-event simulation (SimPy) of one strategy's schedule on a cluster shape, with costs
measured on real runs:

* :mod:`~harness.simulate.costs`: the cost model (start-up, per-iteration train and checkpoint,
  restore, the scheduler's own delays, each a measured distribution), fitted from run records or
  read from a file a user edits for their cluster;
* :mod:`~harness.simulate.policies`: the strategies' decisions, replayed from a run record or taken
  by their own rules on losses drawn from recorded curves (what-if);
* :mod:`~harness.simulate.engine`: the simulation, which writes an ordinary
  :class:`~harness.contract.record.RunRecord`, so every table, verdict and plot of a measured run
  applies unchanged (and says it was simulated);
* :mod:`~harness.simulate.study`: replay, what-if, predicted against measured, and the scaling
  sweeps; :mod:`~harness.simulate.outputs` and :mod:`~harness.simulate.commands` write and run them.
"""
