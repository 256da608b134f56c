"""Search orchestration: the one place with Ray code besides the trainable (``trainables/``).

* ``settings``   - ``SearchSettings``, what a search was started with (``DIR/search.json``);
* ``searcher``   - Optuna through Ray Tune's ``OptunaSearch`` (samplers, the baseline first);
* ``schedulers`` - Tune schedulers (FIFO, ASHA on cumulative FLOPs);
* ``runner``     - ``run_search``: Ray, the data check, the Tuner, resume;
* ``commands``   - the ``search``, ``pareto`` and ``demo`` commands (Ray is imported only when they run).

Arrows point one way: core (``c2f_search``) <- ``trainables`` <- this package <- the CLI.
"""
