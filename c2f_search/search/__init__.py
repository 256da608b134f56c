"""Search orchestration: the one place with Ray code besides the trainable (``trainables/``).

* ``settings``   - ``SearchSettings``, what a search was started with (``DIR/search.json``);
* ``searcher``   - Optuna through Ray Tune's ``OptunaSearch`` (samplers, the baseline first, no repeats);
* ``schedulers`` - Tune schedulers (FIFO, ASHA and MOASHA on cumulative FLOPs, PBT);
* ``warm_start`` - ``--warm-start``: earlier searches' trials imported (same setting) or enqueued;
* ``runner``     - ``run_search``: Ray, the data check, the Tuner, resume, the checkpoints the front needs;
* ``confirm``    - ``run_confirm``: the baseline and the top front schedules re-run with new seeds;
* ``commands``   - the ``search``, ``pareto``, ``confirm``, ``report`` and ``demo`` commands (Ray is
  imported only when they run).

Arrows point one way: core (``c2f_search``) <- ``trainables`` <- this package <- the CLI.
"""
