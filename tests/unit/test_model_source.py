import hashlib

import pytest

from tasks import model_source, settings
from tasks.settings import BUNDLED_MODEL, DeployError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(model_source, "CACHE_DIR", tmp_path / "cache")
    model_source._resolved.clear()


def test_a_local_file_needs_its_sha256(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(DeployError, match="model_sha256 is required for model_source"):
        model_source.resolve("mine", str(model), None)


def test_a_local_file_with_another_sum_is_refused(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF tampered")
    pinned = hashlib.sha256(b"the real one").hexdigest()
    with pytest.raises(DeployError, match=f"sha256 is {hashlib.sha256(b'GGUF tampered').hexdigest()}, "
                                          f"but model_sha256 pins {pinned}"):
        model_source.resolve("mine", str(model), pinned)


def test_a_file_that_is_not_gguf_is_refused_even_with_the_right_sum(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"<html>not a model</html>")
    with pytest.raises(DeployError, match="is not a GGUF file"):
        model_source.resolve("mine", str(model), hashlib.sha256(model.read_bytes()).hexdigest())


@pytest.mark.parametrize("name, source, sha, message", [
    ("mine", "http://example.invalid/m.gguf", "0" * 64, "only https:// URLs"),
    ("mine", "/nonexistent/m.gguf", "0" * 64, "is not a file on this controller"),
    ("mine", "bundled", "0" * 64, "is not the bundled model's"),
])
def test_bad_model_data_is_refused(name, source, sha, message):
    with pytest.raises(DeployError, match=message):
        model_source.resolve(name, source, sha)


def test_the_pinned_bundled_sum_is_a_sha256():
    assert settings.check_value("model_sha256", BUNDLED_MODEL["sha256"]) is None
