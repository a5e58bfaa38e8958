import struct

import pytest

from tasks import gguf


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _write_gguf(path, pairs, magic=b"GGUF", version=3):
    body = b""
    for key, kind, payload in pairs:
        body += _string(key) + struct.pack("<I", kind) + payload
    path.write_bytes(magic + struct.pack("<IQQ", version, 0, len(pairs)) + body)


def test_reads_scalars_strings_and_skips_arrays(tmp_path):
    model = tmp_path / "m.gguf"
    _write_gguf(model, [
        ("general.architecture", 8, _string("llama")),
        ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + _string("a") + _string("b")),
        ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0, 1, 2)),
        ("llama.block_count", 4, struct.pack("<I", 30)),
        ("llama.embedding_length", 4, struct.pack("<I", 576)),
        ("llama.attention.head_count", 4, struct.pack("<I", 9)),
        ("llama.attention.head_count_kv", 4, struct.pack("<I", 3)),
    ])
    metadata = gguf.read_metadata(model)
    assert metadata["general.architecture"] == "llama"
    assert metadata["llama.block_count"] == 30
    assert gguf.kv_cache_bytes(metadata, 1024) == 30 * 3 * 128 * 2 * 1024


def test_not_a_gguf_file_is_refused(tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(gguf.GgufError, match="not a GGUF file"):
        gguf.read_metadata(model)


def test_truncated_header_is_refused(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5))
    with pytest.raises(gguf.GgufError, match="file ends inside the GGUF header"):
        gguf.read_metadata(model)


def test_missing_architecture_fields_are_named():
    with pytest.raises(gguf.GgufError, match="lacks 'llama.block_count'"):
        gguf.kv_cache_bytes({"general.architecture": "llama"}, 2048)


def _array(fmt: str, kind: int, values: list[int]) -> bytes:
    return struct.pack("<IQ", kind, len(values)) + struct.pack(f"<{len(values)}{fmt}", *values)


def test_per_layer_head_counts_are_budgeted_layer_by_layer(tmp_path):
    # OpenELM gives its head counts per layer; a hybrid model has layers without attention.
    model = tmp_path / "m.gguf"
    _write_gguf(model, [
        ("general.architecture", 8, _string("openelm")),
        ("openelm.block_count", 4, struct.pack("<I", 4)),
        ("openelm.embedding_length", 4, struct.pack("<I", 1280)),
        ("openelm.attention.head_count", 9, _array("I", 4, [20, 20, 0, 40])),
        ("openelm.attention.head_count_kv", 9, _array("I", 4, [5, 5, 0, 10])),
        ("openelm.attention.key_length", 4, struct.pack("<I", 64)),
        ("openelm.attention.value_length", 4, struct.pack("<I", 64)),
    ])
    metadata = gguf.read_metadata(model)
    assert metadata["openelm.attention.head_count_kv"] == [5, 5, 0, 10]
    assert gguf.kv_cache_bytes(metadata, 1024, 2) == (5 + 5 + 0 + 10) * (64 + 64) * 2 * 1024 * 2


def test_long_numeric_arrays_are_still_skipped(tmp_path):
    model = tmp_path / "m.gguf"
    _write_gguf(model, [("tokenizer.ggml.token_type", 9, _array("i", 5, list(range(5000)))),
                        ("general.architecture", 8, _string("llama"))])
    metadata = gguf.read_metadata(model)
    assert metadata["tokenizer.ggml.token_type"] is None
    assert metadata["general.architecture"] == "llama"


def test_a_per_layer_array_of_the_wrong_length_is_refused():
    metadata = {"general.architecture": "x", "x.block_count": 3, "x.embedding_length": 64,
                "x.attention.head_count": [4, 4]}
    with pytest.raises(gguf.GgufError, match="head_count has 2 values for 3 layers"):
        gguf.kv_cache_bytes(metadata, 128)
