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


def cached_tiny_flux(cache, classifier_dir):
    """A tiny random FLUX as the hub id ``someone/tiny-flux`` in ``cache`` (its snapshot folder
    returned) and a classifier that fits it saved at ``classifier_dir``."""
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
    from l2s.pipelines.loading import save_pipeline

    repo, commit = cache / "models--someone--tiny-flux", "89abcdef0123456789abcdef0123456789abcdef"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    pipe = tiny_flux_pipeline(seed=0)
    save_pipeline(pipe, repo / "snapshots" / commit)
    tiny_classifier_for(pipe, seed=0).save(classifier_dir)
    return repo / "snapshots" / commit
