"""``settings``: the defaults have one source, and the one merge layers them."""

from __future__ import annotations

from c2f_search import TrainConfig
from c2f_search.cli.args import Parser, add_model_args, given_config
from c2f_search.config import defaults
from c2f_search.settings import train_config


def test_defaults_have_one_source():
    p = Parser()
    add_model_args(p)
    assert train_config(given_config(p.parse_args([])), {"schedule": "none:1x1"}) == TrainConfig("none:1x1")
    from trainables import trial_config

    assert trial_config({"schedule": "none:1x1"}, {"model": "ast-tiny"}) == TrainConfig("none:1x1")
    d = defaults()
    assert (d["batch_size"], d["warmup_steps"]) == (16, 20)
