"""Fixtures of the web-data tests: two tiny webdataset shards (real JPEGs)."""

import json
import os

import numpy as np
import pytest
from web.webshards import make_samples, write_shard


@pytest.fixture(scope="session")
def web_shards(tmp_path_factory):
    """2 shards × 40 samples; returns (brace pattern, {uid: sample})."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(5)
    by_uid = {}
    for s in range(2):
        samples = make_samples(rng, 40 * s, 40)
        write_shard(os.path.join(root, f"{s:05d}.tar"), samples)
        by_uid |= {json.loads(x["json"])["uid"]: x for x in samples}
    return f"{root}/{{00000..00001}}.tar", by_uid
