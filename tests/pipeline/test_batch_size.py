"""model.max_batch auto: which sizes are probed, which wins, what is cached. The
throughputs are given (a table per test), never timed: the logic is what is tested."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.videomamba import make_tiny_model
from vmstream.pipeline.batch_size import candidates, choose, resolve_max_batch, sweep
from vmstream.pipeline.config import ConfigError, load_config


def test_candidates_stop_at_the_streams_decoded_at_once():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(6) == [1, 2, 4, 6]
    assert candidates(16) == [1, 2, 4, 8, 16]
    assert candidates(100) == [1, 2, 4, 8, 16]


def test_choose_takes_the_smallest_size_near_the_best():
    assert choose({1: 2.0, 2: 2.05, 4: 1.9}) == 1  # within 5 %: less latency wins
    assert choose({1: 1.0, 2: 1.8, 4: 3.0, 8: 3.1}) == 4
    assert choose({1: 1.0, 2: 0.7}) == 1
    with pytest.raises(ValueError):
        choose({})


def test_sweep_stops_once_throughput_falls():
    asked = []
    table = {1: 1.0, 2: 1.5, 4: 1.2, 8: 9.0}

    def measure(b):
        asked.append(b)
        return table[b]

    assert sweep(measure, [1, 2, 4, 8]) == {1: 1.0, 2: 1.5, 4: 1.2}
    assert asked == [1, 2, 4]


def _resolve(tmp_path, table, max_streams=8, asked=None, **kw):
    def measure(b):
        if asked is not None:
            asked.append(b)
        return table[b]

    return resolve_max_batch("auto", model=make_tiny_model(), max_streams=max_streams, device="cpu", frames=4,
                             cache_file=tmp_path / "probe.json", measure=measure, **kw)


def test_auto_picks_the_measured_best_and_caches_it(tmp_path):
    asked = []
    table = {1: 1.0, 2: 1.9, 4: 2.5, 8: 2.4}
    assert _resolve(tmp_path, table, asked=asked) == 4
    assert asked == [1, 2, 4, 8]
    entry = next(iter(json.loads((tmp_path / "probe.json").read_text()).values()))
    assert entry["sizes"] == [1, 2, 4, 8] and entry["measured"]["4"] == 2.5
    # The second run reads the cache: no probe (a different table would give another answer).
    asked.clear()
    assert _resolve(tmp_path, {1: 9.0, 2: 1.0, 4: 1.0, 8: 1.0}, asked=asked) == 4 and asked == []
    # Another precision or stream count is another question: probed again.
    assert _resolve(tmp_path, {1: 9.0, 2: 1.0, 4: 1.0, 8: 1.0}, asked=asked, precision="bf16") == 1
    assert asked == [1, 2]
    asked.clear()
    assert _resolve(tmp_path, {1: 1.0, 2: 3.0}, max_streams=2, asked=asked) == 2 and asked == [1, 2]


def test_other_kernel_code_is_probed_again(tmp_path, monkeypatch):
    from vmstream.pipeline import batch_size

    asked = []
    assert _resolve(tmp_path, {1: 1.0, 2: 1.9, 4: 2.5}, max_streams=4, asked=asked) == 4
    fingerprint = batch_size.ops_fingerprint()
    assert len(fingerprint) == 16 and fingerprint == batch_size.ops_fingerprint()
    monkeypatch.setattr(batch_size, "ops_fingerprint", lambda: "a-faster-kernel")
    asked.clear()
    assert _resolve(tmp_path, {1: 3.0, 2: 1.0, 4: 1.0}, max_streams=4, asked=asked) == 1 and asked == [1, 2]


def test_a_number_or_one_stream_needs_no_probe(tmp_path):
    def measure(b):
        raise AssertionError("probed")

    model = make_tiny_model()
    assert resolve_max_batch(3, model=model, max_streams=8, device="cpu", frames=4, measure=measure,
                             cache_file=tmp_path / "p.json") == 3
    assert resolve_max_batch("auto", model=model, max_streams=1, device="cpu", frames=4, measure=measure,
                             cache_file=tmp_path / "p.json") == 1
    assert not (tmp_path / "p.json").exists()


def test_a_damaged_cache_is_probed_again(tmp_path):
    (tmp_path / "probe.json").write_text("{not json")
    assert _resolve(tmp_path, {1: 1.0, 2: 2.0}, max_streams=2) == 2
    assert json.loads((tmp_path / "probe.json").read_text())


def test_the_real_probe_runs_the_model(tmp_path):
    # No timing asserted: only that the probe measures something and answers a candidate.
    model = make_tiny_model()
    got = resolve_max_batch("auto", model=model, max_streams=2, device="cpu", frames=4,
                            cache_file=tmp_path / "p.json")
    assert got in (1, 2)
    measured = next(iter(json.loads((tmp_path / "p.json").read_text()).values()))["measured"]
    assert all(v > 0 for v in measured.values())


def test_config_default_is_auto_and_numbers_override():
    assert load_config().model.max_batch == "auto"
    assert load_config(sets=["model.max_batch=8"]).model.max_batch == 8
    for bad in ("0", "fast", "2.5", "257"):
        with pytest.raises(ConfigError, match="model.max_batch: must be 'auto' or a whole number"):
            load_config(sets=[f"model.max_batch={bad}"])
