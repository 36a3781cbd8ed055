"""The demo fails when the method it reports did not run (decode compression silently off)."""

from types import SimpleNamespace

from entropyinfer_sgl import EntropyInferConfig
from entropyinfer_sgl.demo import compression_missing

SMALL = EntropyInferConfig.small()
PAST_DELAY = SMALL.decode_delay_steps + 8  # new tokens: the compression event is due


def _stats(events, kept):
    return SimpleNamespace(compression_events=events, kv_kept_fraction=kept)


def test_a_run_that_compressed_passes():
    assert compression_missing(SMALL, _stats(1, 0.17), prompt_tokens=1500, new_tokens=PAST_DELAY) is None


def test_no_compression_event_is_an_error():
    assert "no compression event" in compression_missing(SMALL, _stats(0, None), prompt_tokens=1500, new_tokens=PAST_DELAY)


def test_nothing_evicted_is_an_error():
    assert "kept every entry" in compression_missing(SMALL, _stats(1, 1.0), prompt_tokens=1500, new_tokens=PAST_DELAY)


def test_no_compression_is_expected_where_none_is_due():
    off = SMALL.replace(decode_compression=False)
    assert compression_missing(off, _stats(0, None), prompt_tokens=1500, new_tokens=PAST_DELAY) is None
    assert compression_missing(SMALL, _stats(0, None), prompt_tokens=1500, new_tokens=SMALL.decode_delay_steps) is None
    assert compression_missing(SMALL, _stats(0, None), prompt_tokens=200, new_tokens=PAST_DELAY) is None
