"""The incremental SSE parser the guard, the benchmark and the load tests share."""

from pathlib import Path

from nas_ai_engine.sse import DataParser

RECORDED = (Path(__file__).parent / "data" / "chat_stream.sse").read_bytes()


def test_a_line_cut_anywhere_comes_out_once_whole():
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\n\n'
    for cut in range(len(stream) + 1):
        parser = DataParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == ['{"a": 1}', '{"b": 2}'], cut


def test_crlf_and_cr_line_ends_even_cut_between_cr_and_lf():
    parser = DataParser()
    assert parser.feed(b'data: {"a": 1}\r') == ['{"a": 1}']
    assert parser.feed(b'\n\r\ndata: {"b": 2}\r\rdata: {"c": 3}\r\n') == ['{"b": 2}', '{"c": 3}']


def test_several_events_in_one_feed_and_none_until_a_line_ends():
    parser = DataParser()
    assert parser.feed(b'data: 1\n\ndata: 2\n\ndata: 3') == ["1", "2"]
    assert parser.feed(b"") == []
    assert parser.feed(b"\n\n") == ["3"]


def test_done_is_not_a_payload_but_is_noted():
    parser = DataParser()
    assert parser.feed(b'data: {"a": 1}\n\n') == ['{"a": 1}'] and not parser.done
    assert parser.feed(b"data: [DONE]\n\n") == [] and parser.done


def test_comments_event_names_and_blank_lines_are_skipped():
    parser = DataParser()
    assert parser.feed(b": ping\n\nevent: message\nid: 7\ndata:{\"a\": 1}\n\n") == ['{"a": 1}']


def test_a_multibyte_character_cut_between_feeds_is_decoded_whole():
    line = 'data: {"content": "café"}\n'.encode()
    cut = line.index("é".encode()) + 1
    parser = DataParser()
    assert parser.feed(line[:cut]) + parser.feed(line[cut:]) == ['{"content": "café"}']


def test_the_recorded_stream_byte_by_byte():
    parser = DataParser()
    payloads = [payload for byte in range(len(RECORDED)) for payload in parser.feed(RECORDED[byte:byte + 1])]
    assert len(payloads) == RECORDED.count(b"data:") - 1 and parser.done
