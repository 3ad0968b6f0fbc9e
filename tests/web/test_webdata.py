"""Reading webdataset shards: every sample of a whole tar, and a refusal for a cut one."""

import gzip

import numpy as np
import pytest
from web.webshards import make_samples, write_shard

from d2scale.errors import D2ScaleError
from d2scale.web.webdata import iter_samples


@pytest.fixture
def whole(tmp_path):
    write_shard(tmp_path / "whole.tar", make_samples(np.random.default_rng(9), 0, 5))
    return tmp_path / "whole.tar"


def test_a_whole_tar_plain_or_gzipped_gives_every_sample(whole, tmp_path):
    assert [s["__key__"] for s in iter_samples(str(whole))] == [f"{i:08d}" for i in range(5)]
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress(whole.read_bytes()))
    assert len(list(iter_samples(str(tmp_path / "z.tar.gz")))) == 5


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda hdr: hdr, "is truncated: it stops after 12 files"),  # at a member boundary
        (lambda hdr: hdr + 100, "is truncated: it stops after 12 files"),  # inside a header
        (lambda hdr: hdr - 100, "unexpected end of data"),  # inside a member
    ],
)
def test_a_cut_tar_is_refused(whole, tmp_path, cut, message):
    import tarfile

    with tarfile.open(whole) as tar:
        header = tar.getmembers()[12].offset  # sample 3's first member
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[: cut(header)])
    with pytest.raises(D2ScaleError, match=f"cut.tar.*{message}"):
        list(iter_samples(str(tmp_path / "cut.tar")))
