"""The remote index (repro/store/remoteindex.py): what this machine knows a store remote holds, on
disk under the cache, read back by the next process."""
from __future__ import annotations

import hashlib

from repro.store.remote import RemoteConfig
from repro.store.remoteindex import RemoteIndex, index_path


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_what_one_process_learns_the_next_one_knows(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    here = RemoteConfig("s3://bucket/prefix")
    a, b = _sha("a"), _sha("b")
    RemoteIndex(here).learn({a: 10})
    RemoteIndex(here).learn({b: 20, a: 10})        # a known blob is not written twice
    assert index_path(here).read_text().count(a) == 1
    again = RemoteIndex(here)
    assert again.has(a, 10) and again.has(b, 20)
    assert not again.has(a, 11)                    # the size is part of what is known
    other = RemoteConfig("s3://bucket/prefix", {"endpoint_url": "http://elsewhere"})
    assert not RemoteIndex(other).has(a, 10)       # another remote (its options too) knows nothing


def test_a_listing_replaces_the_index_and_forget_empties_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    here = RemoteConfig("file:///srv/store")
    a, b = _sha("a"), _sha("b")
    index = RemoteIndex(here)
    index.learn({a: 1})
    index.replace({b: 2})                          # the remote, as listed: a is gone from it
    assert not RemoteIndex(here).has(a, 1) and RemoteIndex(here).has(b, 2)
    index.forget()
    assert not index.has(b, 2) and not index_path(here).exists()
    assert not RemoteIndex(here).has(b, 2)


def test_a_damaged_index_costs_only_what_it_lost(tmp_path, monkeypatch):
    """A line cut short (a writer killed mid-line) or garbage is skipped; the rest is used."""
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    here = RemoteConfig("s3://bucket/prefix")
    a, b = _sha("a"), _sha("b")
    path = index_path(here)
    path.parent.mkdir(parents=True)
    path.write_text(f"{a} 5\nnot a line\n{b[:40]}")
    index = RemoteIndex(here)
    assert index.has(a, 5) and not index.has(b, 5)
    index.learn({b: 5})                             # appended after the cut line: read back whole
    assert RemoteIndex(here).has(b, 5) and RemoteIndex(here).has(a, 5)
