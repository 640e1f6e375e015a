"""An empty, offline Hugging Face cache for tests that load hub ids from the local cache."""
import pytest
from huggingface_hub import constants


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (what HF_HOME/hub holds), offline as every test is (conftest)."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
