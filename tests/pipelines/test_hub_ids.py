"""Hub ids of base models: loaded from the local Hugging Face cache (made here, offline), never
downloaded; an id not in the cache is one line saying how to get it."""
from __future__ import annotations

import pytest

from l2s.demo import tiny_flux_pipeline
from l2s.pipelines.loading import save_pipeline
from l2s.errors import ModelLoadError
from l2s.pipelines import load_diffusers_pipeline
from l2s.pipelines.loading import pipeline_folder

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def test_hub_id_in_the_local_cache_loads(hub_cache):
    repo = hub_cache / "models--someone--tiny-flux"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    save_pipeline(tiny_flux_pipeline(seed=0), repo / "snapshots" / COMMIT)
    assert pipeline_folder("someone/tiny-flux") == repo / "snapshots" / COMMIT
    pipe = load_diffusers_pipeline("someone/tiny-flux")
    assert type(pipe).__name__ == "FluxPipeline"


def test_hub_id_not_in_the_cache_says_how_to_get_it(hub_cache):
    with pytest.raises(ModelLoadError) as error:
        load_diffusers_pipeline("black-forest-labs/FLUX.1-dev")
    message = str(error.value)
    assert "\n" not in message and "`hf download black-forest-labs/FLUX.1-dev`" in message
    assert str(hub_cache) in message


def test_a_missing_folder_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json missing"):
        load_diffusers_pipeline(tmp_path / "absent")
