"""The engine's prefix cache: the KV of many prompt beginnings, bounded by memory, least recently used out.

Causal attention makes the keys and values of a prompt's first tokens independent of what follows, so a
prompt that starts like one seen before (a shared system prompt, the earlier turns of a conversation)
prefills only the tokens after the shared part. The cache keeps one entry per prompt seen (its first
`max_entry_tokens` tokens and their KV, copied), drops an entry that a longer prompt extends (the longer
one serves every lookup the shorter one could), and evicts the least recently used entries once the
entries' bytes pass `max_bytes`. A lookup returns the entry with the longest common beginning. Sibling
engines (decode lanes) share one cache: every call takes the lock, and entries are never written after
they are stored, so the arrays a lookup returns stay valid after an eviction.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CACHE_MB_ENV = "TRITONFORM_PREFIX_CACHE_MB"
DEFAULT_CACHE_MB = 256  # ~5,700 tokens of SmolLM2-135M (46 KB a token); 0 turns the cache off
DEFAULT_ENTRY_TOKENS = 4096


@dataclass
class PrefixCacheStats:
    """What the cache did, for tests, logs and benchmarks."""

    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    stored: int = 0
    evicted: int = 0
    subsumed: int = 0


@dataclass(frozen=True)
class _Entry:
    ids: np.ndarray  # int64 [n]
    kv: tuple[np.ndarray, ...]  # per present tensor, [1, H, n, D]
    nbytes: int


def cache_bytes_from_env() -> int:
    """The cache's budget: $TRITONFORM_PREFIX_CACHE_MB megabytes (default 256; 0 turns it off)."""
    raw = os.environ.get(CACHE_MB_ENV, "").strip()
    try:
        megabytes = float(raw) if raw else DEFAULT_CACHE_MB
    except ValueError:
        raise ValueError(
            f"{CACHE_MB_ENV}={raw!r} is not a number of megabytes (e.g. 256, or 0 for off)"
        ) from None
    return max(0, int(megabytes * 1024 * 1024))


class PrefixCache:
    """Many prompt prefixes' KV within `max_bytes`; thread-safe."""

    def __init__(self, max_bytes: int, min_tokens: int, max_entry_tokens: int = DEFAULT_ENTRY_TOKENS) -> None:
        self.max_bytes, self.min_tokens, self.max_entry_tokens = max_bytes, min_tokens, max_entry_tokens
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.nbytes = 0
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int], limit: int) -> tuple[int, list[np.ndarray]]:
        """(tokens reused, their KV sliced to that length) for the entry sharing the longest beginning with
        `ids`, at most `limit` tokens; (0, []) when none shares `min_tokens`."""
        if limit < self.min_tokens or not self._entries:
            with self._lock:
                self.stats.lookups += 1
            return 0, []
        query = np.asarray(ids[:limit], dtype=np.int64)
        with self._lock:
            self.stats.lookups += 1
            best_key, best = None, 0
            for key, entry in self._entries.items():
                n = min(len(entry.ids), len(query))
                if n <= best:
                    continue
                differ = np.flatnonzero(entry.ids[:n] != query[:n])
                shared = int(differ[0]) if differ.size else n
                if shared > best:
                    best_key, best = key, shared
            if best_key is None or best < self.min_tokens:
                return 0, []
            entry = self._entries[best_key]
            self._entries.move_to_end(best_key)
            self.stats.hits += 1
            self.stats.reused_tokens += best
        return best, [np.ascontiguousarray(kv[:, :, :best, :]) for kv in entry.kv]

    def store(self, ids: Sequence[int], kv: Sequence[np.ndarray]) -> None:
        """Keep the KV of `ids`' first `max_entry_tokens` tokens (copied), then evict to the budget."""
        keep = min(len(ids), self.max_entry_tokens)
        if keep < self.min_tokens or self.max_bytes <= 0:
            return
        arrays = tuple(np.array(t[:, :, :keep, :], copy=True) for t in kv)
        entry = _Entry(np.asarray(ids[:keep], dtype=np.int64), arrays, sum(a.nbytes for a in arrays))
        if entry.nbytes > self.max_bytes:
            return
        key = entry.ids.tobytes()
        with self._lock:
            covering = next((k for k, e in self._entries.items() if _extends(e.ids, entry.ids)), None)
            if covering is not None:  # a longer prompt starting with all of this one is kept already
                self._entries.move_to_end(covering)
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            for other_key in [k for k, e in self._entries.items() if _extends(entry.ids, e.ids)]:
                self.nbytes -= self._entries.pop(other_key).nbytes
                self.stats.subsumed += 1
            self._entries[key] = entry
            self.nbytes += entry.nbytes
            self.stats.stored += 1
            while self.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.nbytes
                self.stats.evicted += 1


def _extends(longer: np.ndarray, shorter: np.ndarray) -> bool:
    """Whether `longer` starts with all of `shorter` (so `shorter`'s entry is no longer needed)."""
    return len(shorter) <= len(longer) and bool(np.array_equal(longer[: len(shorter)], shorter))
