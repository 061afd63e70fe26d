"""The soak (issue 23): hours of churn, jitter, restarts and writes against real processes, with
every page checking its own streams and memory sampled throughout. ``make soak`` runs
:mod:`tests.soak.run`; docs/soak.rst has what it measured."""
