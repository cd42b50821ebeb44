"""The FrameStore suite (:mod:`llmri.testing.store`, shipped with llmri), run against every store of
llmri's own: one subclass per implementation (zarr-python style)."""

from __future__ import annotations

import itertools

import pytest

import llmri
from llmri import MemoryFrameStore
from llmri.store.zarr import ZarrFrameStore
from llmri.testing.store import StoreSuite


class TestMemoryFrameStore(StoreSuite):
    buffers_appends = False

    def make_store(self, tmp_path):
        return MemoryFrameStore()


class TestZarrLocal(StoreSuite):
    def make_store(self, tmp_path):
        return llmri.open_store(tmp_path / "run.zarr", create=True)

    def reopen(self, store):
        return ZarrFrameStore(store.url)


class TestZarrFileURL(StoreSuite):
    def make_store(self, tmp_path):
        return ZarrFrameStore(f"file://{tmp_path}/run.zarr", create=True)

    def reopen(self, store):
        return ZarrFrameStore(store.url)


class TestZarrMemoryURL(StoreSuite):
    _n = itertools.count()

    def make_store(self, tmp_path):
        return ZarrFrameStore(f"memory://llmri-suite-{next(self._n)}-{tmp_path.name}/run.zarr", create=True)

    def reopen(self, store):
        return ZarrFrameStore(store.url)


class TestZarrS3(StoreSuite):
    """The same suite on moto's real S3 server (tests/conftest.py: s3_server), through s3fs."""

    @pytest.fixture(autouse=True)
    def _bucket(self, s3_bucket):
        self.bucket = s3_bucket

    def make_store(self, tmp_path):
        return ZarrFrameStore(f"s3://{self.bucket}/run.zarr", create=True)

    def reopen(self, store):
        return ZarrFrameStore(store.url)
