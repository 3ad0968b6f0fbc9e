"""The pool of a batch bucket: a directory or fsspec URL, a glob of directories (their union)
or a glob of ``.parquet`` files (those pairs), and unions of pools (``global: true``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.pool.sources import APPLEDOUBLE, Pool, open_pool


def resolve_pool(spec: str) -> Pool:
    """The pool of a bucket: a directory or URL, or a glob of directories (their union) or
    of ``.parquet`` files (those pairs)."""
    if not any(c in spec for c in "*?["):
        return open_pool(spec)
    import fsspec

    fs, pattern = fsspec.core.url_to_fs(spec)
    try:
        matches = sorted(fs.glob(pattern))
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot expand {spec}: {e}") from None
    parquets = [
        m for m in matches if m.endswith(".parquet") and not _base(m).startswith(APPLEDOUBLE)
    ]
    if parquets:
        return _file_pool(spec, fs, parquets)
    dirs = [m for m in matches if fs.isdir(m)]
    if not dirs:
        raise D2ScaleError(f"{spec} matches no directory and no .parquet file")
    return union_pool([open_pool(_url(spec, fs, d)) for d in dirs], [_base(d) for d in dirs])


def pool_directories(spec: str) -> list[str]:
    """The directories whose files a bucket's pool reads, without opening them (a glob that
    cannot be expanded gives none: :func:`resolve_pool` says why)."""
    if not any(c in spec for c in "*?["):
        return [spec]
    import fsspec

    try:
        fs, pattern = fsspec.core.url_to_fs(spec)
        matches = fs.glob(pattern)
    except (OSError, ValueError, ImportError):
        return []
    return sorted({m.rsplit("/", 1)[0] if m.endswith(".parquet") else m for m in matches})


def union_pool(pools: list[Pool], labels: list[str]) -> Pool:
    """One pool of ``pools`` in order (labels prefix the shard names); same filesystem."""
    if len(pools) == 1:
        return pools[0]
    protocols = {str(p.fs.protocol) for p in pools}
    if len(protocols) > 1:
        raise D2ScaleError(
            f"the buckets of one selection must be on one filesystem; got {sorted(protocols)}"
        )
    shards, offset = [], 0
    for pool, label in zip(pools, labels, strict=True):
        for s in pool.shards:
            shards.append(dataclasses.replace(s, name=f"{label}/{s.name}", offset=offset))
            offset += s.rows
    digest = _digest([[label, p.fingerprint] for p, label in zip(pools, labels, strict=True)])
    return Pool(" + ".join(p.url for p in pools), pools[0].fs, shards, digest)


def _file_pool(spec: str, fs, parquets: list[str]) -> Pool:
    """The pairs of the matched ``.parquet`` files, grouped by directory."""
    by_dir: dict[str, list[str]] = {}
    for path in parquets:
        parent, name = path.rstrip("/").rsplit("/", 1)
        by_dir.setdefault(parent, []).append(name[: -len(".parquet")])
    pools = []
    for parent, names in by_dir.items():
        pool = open_pool(_url(spec, fs, parent))
        keep = [s for s in pool.shards if s.name in set(names)]
        shards, offset = [], 0
        for s in keep:
            shards.append(dataclasses.replace(s, offset=offset))
            offset += s.rows
        pools.append(Pool(pool.url, pool.fs, shards, _digest([pool.fingerprint, names])))
    return union_pool(pools, [_base(d) for d in by_dir])


def _url(spec: str, fs, path: str) -> str:
    return path if io.is_local(spec) else fs.unstrip_protocol(path)


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]
