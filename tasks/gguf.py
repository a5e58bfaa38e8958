"""Read the few GGUF header fields the memory budget needs, without loading the model."""

import struct
from pathlib import Path

# GGUF value types: id -> struct format (strings and arrays are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Numeric arrays this short are decoded: some architectures (OpenELM, Nemotron-H, hybrids) give
# head counts per layer. Longer ones (token scores and types, 49k+ entries) are skipped.
_PER_LAYER_MAX = 4096


class GgufError(ValueError):
    pass


class _Reader:
    def __init__(self, handle):
        self.handle = handle

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise GgufError("file ends inside the GGUF header")
        return struct.unpack("<" + fmt, data)[0]

    def string(self) -> str:
        length = self.read("Q")
        if length > 1 << 24:
            raise GgufError("implausible string length in the GGUF header")
        return self.handle.read(length).decode("utf-8", "replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.read(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.read("I"), self.read("Q")
            if item_kind in _SCALARS and count <= _PER_LAYER_MAX:  # per-layer values
                return [self.read(_SCALARS[item_kind]) for _ in range(count)]
            if item_kind in _SCALARS:  # skip long numeric arrays (token scores, types) unread
                self.handle.seek(struct.calcsize("<" + _SCALARS[item_kind]) * count, 1)
                return None
            for _ in range(count):
                self.value(item_kind)
            return None
        raise GgufError(f"unknown GGUF value type {kind}")


def read_metadata(path: Path) -> dict:
    """The header's key/value pairs of a GGUF file: short numeric arrays as lists, other arrays
    skipped (None)."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GgufError(f"{path} is not a GGUF file (no GGUF magic)")
        reader = _Reader(handle)
        version = reader.read("I")
        if version not in (2, 3):
            raise GgufError(f"{path}: GGUF version {version} is not supported")
        reader.read("Q")  # tensor count
        metadata = {}
        for _ in range(reader.read("Q")):
            key = reader.string()
            metadata[key] = reader.value(reader.read("I"))
    return metadata


def _per_layer(key: str, value, layers: int) -> list:
    """A hyperparameter as one value per layer, whether the header gives a scalar or a list."""
    if isinstance(value, list):
        if len(value) != layers:
            raise GgufError(f"GGUF header's {key} has {len(value)} values for {layers} layers")
        return value
    if not isinstance(value, int):
        raise GgufError(f"GGUF header's {key} is not a whole number or a list of them")
    return [value] * layers


def kv_cache_bytes(metadata: dict, context: int, sequences: int = 1) -> int:
    """f16 K and V for every layer and context position: what llama.cpp allocates at load.
    Head counts may differ by layer; a layer without attention heads (a recurrent or
    feed-forward-only layer of a hybrid model) holds no KV cache."""
    arch = metadata.get("general.architecture")
    heads_key, heads_kv_key = f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"
    try:
        layers = metadata[f"{arch}.block_count"]
        embedding = metadata[f"{arch}.embedding_length"]
        heads = _per_layer(heads_key, metadata[heads_key], layers)
    except KeyError as missing:
        raise GgufError(f"GGUF header lacks {missing} (architecture {arch!r})") from None
    heads_kv = _per_layer(heads_kv_key, metadata[heads_kv_key], layers) if heads_kv_key in metadata else heads
    per_token = 0
    for layer_heads, layer_heads_kv in zip(heads, heads_kv):
        if not layer_heads or not layer_heads_kv:
            continue
        key_length = metadata.get(f"{arch}.attention.key_length", embedding // layer_heads)
        value_length = metadata.get(f"{arch}.attention.value_length", embedding // layer_heads)
        per_token += layer_heads_kv * (key_length + value_length) * 2  # f16
    return per_token * context * sequences
