"""vmstream's cache directory: $VMSTREAM_CACHE_DIR, else $XDG_CACHE_HOME/vmstream, else
~/.cache/vmstream; the kernel builds and the batch-size measurements both live there."""

from __future__ import annotations

import json

from vmstream.cache_dir import cache_root


def test_the_cache_directory_is_vmstreams_own_setting_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("VMSTREAM_CACHE_DIR", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "vmstream"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vmstream"
    monkeypatch.setenv("VMSTREAM_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.setenv("VMSTREAM_CACHE_DIR", "")  # empty: as if unset
    assert cache_root() == tmp_path / "xdg" / "vmstream"


def test_the_kernels_and_the_measured_batch_sizes_live_there(tmp_path, monkeypatch):
    from tests.fixtures.videomamba import make_tiny_model
    from vmstream.models.ops import cpu_ext
    from vmstream.pipeline.batch_size import resolve_max_batch

    monkeypatch.setenv("VMSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    assert cpu_ext.cache_root() == tmp_path / "cache"
    table = {1: 1.0, 2: 1.8, 4: 1.7}
    pick = resolve_max_batch(
        "auto", model=make_tiny_model(), max_streams=4, device="cpu", frames=4, measure=table.__getitem__
    )
    assert pick == 2
    probe = json.loads((tmp_path / "cache" / "batch_probe.json").read_text())
    assert [entry["measured"] for entry in probe.values()] == [{"1": 1.0, "2": 1.8, "4": 1.7}]
