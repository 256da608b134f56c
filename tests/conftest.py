import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")

import pytest  # noqa: E402

TINY_DATA = "builtin:events?train=40&val=20&seed=3"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test shares one cache (built-in audio and fbank stores) outside the user's home."""
    d = tmp_path_factory.mktemp("c2f-cache")
    os.environ["C2F_CACHE"] = str(d)
    yield d


@pytest.fixture(scope="session")
def tiny_data(_cache):
    from c2f_search.data import Data
    return Data.from_specs(TINY_DATA)
