"""Figures of a stream recorded from the lab's engine (tests/unit/data/chat_stream.sse: 16 tokens,
a role-only first chunk, a content-less last chunk, then [DONE])."""

from pathlib import Path

import pytest

from loadtests.stream_metrics import StreamError, measure

RECORDED = (Path(__file__).parent / "data" / "chat_stream.sse").read_bytes().splitlines()


def _timed(lines, start=100.0, first_text_at=100.4, step=0.02):
    """Arrival times: the role chunk at 100.3, the first text at 100.4, then one every 20 ms."""
    timed, now, seen_text = [], start + 0.3, False
    for line in lines:
        if b'"content"' in line and not seen_text:
            now, seen_text = first_text_at, True
        elif line.startswith(b"data:") and seen_text:
            now += step
        timed.append((now, line))
    return timed


def test_recorded_stream_figures():
    figures = measure(_timed(RECORDED), sent_at=100.0)
    assert figures.ttft_s == pytest.approx(0.4)  # the first chunk with text, not the role chunk
    assert figures.output_tokens == 16
    assert figures.text.startswith("1")
    # 15 tokens after the first, one every 20 ms, then the finish chunk and [DONE]
    assert figures.total_s == pytest.approx(0.4 + 17 * 0.02)
    assert figures.tokens_per_second == pytest.approx(15 / (17 * 0.02))
    assert figures.inter_token_latency_s == pytest.approx(17 * 0.02 / 15)


def test_usage_in_the_stream_wins_over_counting_chunks():
    lines = [(1.0, 'data: {"choices": [{"delta": {"content": "Hi"}}]}'),
             (1.1, 'data: {"choices": [], "usage": {"completion_tokens": 7}}'),
             (1.2, "data: [DONE]")]
    assert measure(lines, sent_at=0.5).output_tokens == 7


def test_text_completion_chunks_count_too():
    lines = [(1.0, 'data: {"choices": [{"text": "Hello"}]}'), (1.5, "data: [DONE]")]
    figures = measure(lines, sent_at=0.0)
    assert (figures.ttft_s, figures.output_tokens, figures.tokens_per_second) == (1.0, 1, None)


def test_a_stream_cut_short_is_an_error():
    with pytest.raises(StreamError, match="without \\[DONE\\]"):
        measure(_timed(RECORDED[:10]), sent_at=100.0)


def test_an_error_event_is_an_error():
    with pytest.raises(StreamError, match="error mid-stream"):
        measure([(1.0, 'data: {"error": {"message": "engine died"}}')], sent_at=0.0)
