"""A Zarr store on S3 for real: moto's standalone S3 server on loopback (tests/conftest.py), reached
through s3fs with the endpoint and credentials from the usual AWS_* environment variables. Capture,
``llmri info``, ``llmri export``, ``llmri view``'s session list over HTTP and ``to_xarray``, each
against the same session read from a local store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

import llmri
from llmri.backends.synthetic import SyntheticModel
from llmri.store.zarr import ZarrFrameStore

pytestmark = pytest.mark.slow

PROMPT = "Why is the sky blue?"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "llmri", *argv], capture_output=True, text=True, env=env, timeout=120)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_capture_on_s3_equals_local_and_reads_everywhere(s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/study.zarr"
    model = SyntheticModel()
    remote = llmri.capture(model, PROMPT, chat=True, max_new_tokens=12, store=url)
    local = llmri.capture(model, PROMPT, chat=True, max_new_tokens=12, store=tmp_path / "local.zarr")
    s = llmri.open_store(url).session(remote.id)
    ref = llmri.open_store(tmp_path / "local.zarr").session(local.id)
    assert s.status == "complete" and len(s) == len(ref) > 12
    for sig in ref.signals:
        np.testing.assert_array_equal(s.frames(sig), ref.frames(sig))
    np.testing.assert_array_equal(s.tokens.ids, ref.tokens.ids)

    # the objects are really in the bucket, as docs/FORMAT.md lays them out
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists(f"{s3_bucket}/study.zarr/sessions/{s.id}/frames/resid/zarr.json")

    # to_xarray: lazy over the bucket's chunks, equal to the local session's
    ds, dref = s.to_xarray(), ref.to_xarray()
    assert ds["resid"].chunks is not None  # dask, not loaded
    np.testing.assert_array_equal(ds["resid"].values, dref["resid"].values)
    assert list(ds["text"].values) == list(dref["text"].values)

    # llmri info (a subprocess: only the environment tells it where S3 is)
    info = _cli("info", url, s.id, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["meta"]["id"] == s.id

    # llmri export: npz from S3 equals npz from the local store
    out_r, out_l = tmp_path / "r.npz", tmp_path / "l.npz"
    for where, sid, out in ((url, s.id, out_r), (str(tmp_path / "local.zarr"), ref.id, out_l)):
        r = _cli("export", where, sid, "-f", "npz", "-o", str(out))
        assert r.returncode == 0, r.stderr
    with np.load(out_r) as a, np.load(out_l) as b:
        assert set(a.files) == set(b.files) and len(a.files) > 3
        for name in a.files:
            if name != "meta_json":  # ids and dates differ
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_view_lists_sessions_other_processes_create(s3_bucket):
    """The viewer's listing is not a cached S3 listing: a session another process writes appears."""
    url = f"s3://{s3_bucket}/live.zarr"
    first = llmri.capture(SyntheticModel(), "one", max_new_tokens=3, store=url)
    with llmri.view([url], port=0, open_browser=False, block=False) as server:
        listed = _get(server.url + "api/sessions")["sessions"]
        assert [x["id"].split("/")[-1] for x in listed] == [first.id]
        child = (
            "import llmri, sys\n"
            "from llmri.backends.synthetic import SyntheticModel\n"
            "print(llmri.capture(SyntheticModel(), 'two', max_new_tokens=3, store=sys.argv[1]).id)\n"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        r = subprocess.run([sys.executable, "-c", child, url], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        second = r.stdout.strip().splitlines()[-1]
        listed = _get(server.url + "api/sessions")["sessions"]
        assert sorted(x["id"].split("/")[-1] for x in listed) == sorted([first.id, second])


def test_storage_options_reach_s3fs(s3_server, s3_bucket, monkeypatch):
    """Endpoint and credentials as fsspec options instead of the environment."""
    env = s3_server.env()
    for k in env:
        monkeypatch.delenv(k, raising=False)
    opts = {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "key": env["AWS_ACCESS_KEY_ID"],
        "secret": env["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"region_name": env["AWS_DEFAULT_REGION"]},
        "skip_instance_cache": True,
    }
    url = f"s3://{s3_bucket}/opts.zarr"
    store = llmri.open_store(url, create=True, storage_options=opts)
    assert isinstance(store, ZarrFrameStore)
    s = llmri.capture(SyntheticModel(), "hi", max_new_tokens=3, store=store)
    again = llmri.open_store(url, storage_options=opts)
    assert again.session_ids() == [s.id] and len(again.session(s.id)) == len(s)


def test_a_session_id_is_claimed_exclusively_on_s3(s3_bucket):
    """Two writers given the same id: S3's conditional put (If-None-Match) gives the second a new id."""
    from llmri.testing.frames import base_meta, make_frame

    url = f"s3://{s3_bucket}/ids.zarr"
    a, b = ZarrFrameStore(url, create=True), ZarrFrameStore(url, create=True)  # both "create": one store
    meta = base_meta(signals=["resid"])
    meta["id"] = "20260101-000000-abcdef"
    wa = a.create_session(dict(meta))
    wb = b.create_session(dict(meta))
    assert wa.id == meta["id"] and wb.id != wa.id
    wa.append(make_frame(0, ["resid"]))
    wb.append(make_frame(0, ["resid"]))
    wb.append(make_frame(1, ["resid"]))
    wa.close()
    wb.close()
    assert sorted(a.session_ids()) == sorted([wa.id, wb.id])
    assert len(a.session(wa.id)) == 1 and len(a.session(wb.id)) == 2
    assert b.location.claim("zarr.json", b"{}", set()) is False  # the root is there: not overwritten
