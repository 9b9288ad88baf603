"""Who may do what to a bucket: its owner everything, other access keys what ``Config.grants`` gives them.

Levels, each including the ones before it: ``read`` (GET/HEAD objects, listings, ACL, CORS and location
reads), ``write`` (PUT/DELETE/copy/multipart of objects), ``owner`` (deleting the bucket, changing its CORS or
ACL). The owner is ``SkyStore.owner_of`` (its creator, or the operator's key for buckets without one).
"""
from __future__ import annotations

from . import errors
from .metadata import BucketInfo

READ, WRITE, OWNER = "read", "write", "owner"
_RANK = {READ: 1, WRITE: 2, OWNER: 3}


def level_of(store, bucket: BucketInfo, access_key: str) -> str | None:
    """The most ``access_key`` may do to ``bucket`` (None: nothing)."""
    if store.owner_of(bucket) == access_key:
        return OWNER
    grants = store.config.grants
    levels = [table.get(access_key) for table in (grants.get(bucket.name, {}), grants.get("*", {}))]
    levels = [level for level in levels if level]
    return max(levels, key=_RANK.__getitem__) if levels else None


def authorize(store, bucket: BucketInfo, access_key: str, need: str) -> None:
    """AccessDenied unless ``access_key`` holds at least ``need`` on ``bucket``."""
    level = level_of(store, bucket, access_key)
    if level is None or _RANK[level] < _RANK[need]:
        raise errors.AccessDenied("Access Denied", resource=bucket.name)
