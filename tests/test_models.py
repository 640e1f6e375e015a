"""``l2s.models``: the steerer and pipelines that ``--model``, ``--classifier`` and ``--lora`` name,
loaded from Python as the command line loads them (the tiny random models, the shipped shapes
model and its fallback, shipped names and their near misses)."""
import logging

import pytest
import torch

from l2s.errors import L2SError, ModelLoadError, UsageError
from l2s.models import TINY_MODELS, check_built_in_dtype, load_pipeline, load_steerer


def test_the_tiny_model_steers_with_a_random_classifier_and_the_given_settings():
    steerer, source = load_steerer("tiny", device="cpu", true_cfg_scale=2.0, step_size=0.5)
    assert source == ("tiny (tiny random FLUX pipeline); random untrained classifier (tiny demo: steering runs, "
                      "results mean nothing)")
    assert steerer.family == "flux-schnell" and steerer.true_cfg_scale == 2.0 and steerer.step_size == 0.5


def test_every_tiny_name_builds_its_model():
    from l2s.pipelines import SDSteeringPipeline

    assert load_pipeline("tiny-dev").transformer.config.guidance_embeds
    assert not load_pipeline("tiny-flux").transformer.config.guidance_embeds
    steerer, source = load_steerer("tiny-sd", device="cpu")
    assert isinstance(steerer, SDSteeringPipeline) and source.startswith("tiny-sd (tiny random Stable Diffusion pipeline); ")
    assert set(TINY_MODELS) == {"tiny", "tiny-flux", "tiny-dev", "tiny-sd"}


def test_every_tiny_name_announces_itself():
    sources = {name: load_steerer(name, device="cpu")[1].split(";")[0] for name in TINY_MODELS}
    assert sources["tiny-dev"] == "tiny-dev (tiny random FLUX pipeline with a guidance embedding)"
    assert all(source.startswith(f"{name} (tiny random ") for name, source in sources.items())


def test_a_misspelt_shipped_name_is_said_in_python_before_anything_loads(monkeypatch):
    import l2s.models

    monkeypatch.setattr(l2s.models, "_tiny_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(l2s.models, "_shipped_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ModelLoadError, match=r"classifier not found: shapes-k5 \(did you mean 'shapes-k4'\?\)"):
        load_steerer(classifier="shapes-k5")
    with pytest.raises(ModelLoadError, match=r"LoRA adapter not found: shapes-grp \(did you mean 'shapes-grpo'\?\)"):
        load_steerer("tiny", lora="shapes-grp")


def test_without_the_shipped_model_the_tiny_one_runs_with_a_warning_for_every_process(tmp_path, monkeypatch,
                                                                                        caplog):
    import l2s.shapes.model

    monkeypatch.setattr(l2s.shapes.model, "SHIPPED_MODEL_DIR", tmp_path / "assets")
    with caplog.at_level(logging.WARNING, logger="l2s.models"):
        _, source = load_steerer(device="cpu")
    assert source.startswith("tiny (tiny random FLUX pipeline); ")
    (record,) = [r for r in caplog.records if "the shipped shapes model is missing" in r.getMessage()]
    assert record.l2s_every_process   # the command line says it once per machine, not once per process


def test_a_model_folder_needs_a_classifier_and_built_in_models_refuse_another_dtype(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(L2SError, match=r"^classifier PATH is required with model PATH$"):
        load_steerer(tmp_path)
    fp32_only = r"^dtype bf16: the shipped shapes model runs in fp32 only \(dtype applies to model PATH\)$"
    with pytest.raises(UsageError, match=fp32_only):
        load_steerer(dtype="bf16")
    with pytest.raises(UsageError, match="the tiny demo model 'tiny-sd' runs in fp32 only"):
        load_pipeline("tiny-sd", dtype="fp16")
    check_built_in_dtype("tiny", "fp32")
    check_built_in_dtype(None, torch.float32)
    with pytest.raises(L2SError, match=r"^dtype must be a torch.dtype or one of auto, fp32, bf16, fp16; got 'float32'"):
        load_pipeline("tiny", dtype="float32")   # not "runs in fp32 only": the name is unknown, fp32 is fine
    check_built_in_dtype(str(tmp_path), "bf16")   # a folder loads in any dtype
