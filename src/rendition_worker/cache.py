"""Cache keys for rendition lookups: derived from the source version, dropped on every change.

The key includes the source's file name, so a replaced image can never be served the old
image's renditions even by a cache that missed an invalidation; invalidation on generation,
replacement and deletion keeps the current name's entry fresh.
"""

from __future__ import annotations

import hashlib

from django.core.cache import BaseCache, caches

from rendition_worker.conf import get_settings

# 2: an entry holds (renditions, placeholder), no longer the renditions alone;
# 3: and the state row's (state, error).
KEY_VERSION = 3


def lookup_cache() -> BaseCache:
    """The cache named by the CACHE setting."""
    return caches[get_settings().cache]


def renditions_key(content_type_id: int, object_id: str, field: str, name: str) -> str:
    """The cache key of the ready renditions of one source version."""
    text = f"{content_type_id}\x00{object_id}\x00{field}\x00{name}"
    digest = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    return f"rendition_worker:{KEY_VERSION}:{digest}"


def invalidate(content_type_id: int, object_id: str, field: str, *names: str) -> None:
    """Forget the cached lookups of these versions of one source."""
    keys = [renditions_key(content_type_id, object_id, field, name) for name in names if name]
    if keys:
        lookup_cache().delete_many(keys)
