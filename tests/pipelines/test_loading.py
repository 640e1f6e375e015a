"""Loading local diffusers folders into steering pipelines."""
import torch

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline, tiny_sd_pipeline
from l2s.steer import custom_schedule


def test_from_pretrained_loads_local_folders(tmp_path):
    from l2s.pipelines import SteeringPipeline
    from l2s.pipelines.loading import save_pipeline

    for name, pipe in (("flux", tiny_flux_pipeline(seed=0)), ("sd", tiny_sd_pipeline(seed=0))):
        save_pipeline(pipe, tmp_path / name)
        tiny_classifier_for(pipe, seed=0).save(tmp_path / f"{name}-clf")
        steerer = SteeringPipeline.from_pretrained(tmp_path / name, tmp_path / f"{name}-clf",
                                                   torch_dtype=torch.float32)
        result = steerer("a cat above a dog", num_inference_steps=2, height=32, width=32,
                         schedule=custom_schedule(2, steered=[0], iterations=1, step_size=0.1),
                         progress=False)
        assert result.images[0].size == (32, 32) and result.diagnostics.records


def test_folder_family_reads_model_index_and_says_none_when_it_cannot(tmp_path):
    import json

    from l2s.pipelines.loading import folder_family

    for name, family in (("FluxPipeline", "flux"), ("StableDiffusionPipeline", "sd"), ("OtherPipeline", None)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
        assert folder_family(folder) == family
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "model_index.json").write_text('{"_class_na')
    assert folder_family(tmp_path / "torn") is None and folder_family(tmp_path / "absent") is None


def test_guidance_embedded_reads_the_transformer_config_before_loading(tmp_path):
    import json

    from l2s.pipelines.loading import guidance_embedded
    from l2s.shapes import shipped_assets

    for name, config in (("dev", {"guidance_embeds": True}), ("schnell", {"guidance_embeds": False}),
                         ("unreadable", None)):
        (tmp_path / name / "transformer").mkdir(parents=True)
        if config is not None:
            (tmp_path / name / "transformer" / "config.json").write_text(json.dumps(config))
    # an unreadable config says yes: loading the folder then says what is wrong with it
    assert [guidance_embedded(tmp_path / n) for n in ("dev", "schnell", "unreadable")] == [True, False, True]
    assert guidance_embedded(None) is False                      # the tiny demo model, built in code
    if shipped_assets().available:
        assert guidance_embedded(shipped_assets().pipeline) is False


def test_warm_up_makes_one_unsteered_image_quietly(monkeypatch):
    from l2s.pipelines import SteeringPipeline, wrap_pipeline

    pipe = tiny_flux_pipeline(seed=0)
    steerer = wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=0))
    seen = []
    monkeypatch.setattr(SteeringPipeline, "__call__", lambda self, prompt, **kwargs: seen.append((prompt, kwargs)))
    steerer.warm_up("a cat above a dog", seed=3, num_inference_steps=2, schedule="reference", progress=True)
    steerer.warm_up("a cat above a dog", steer=True, seed=3, num_inference_steps=2, schedule="reference")
    assert seen == [("a cat above a dog", dict(seed=3, num_inference_steps=2, schedule=None, progress=False,
                                               steer=False)),
                    ("a cat above a dog", dict(seed=3, num_inference_steps=2, schedule="fast", progress=False,
                                               steer=True))]


def test_from_pretrained_refuses_a_bad_device_or_dtype_before_loading(tmp_path):
    import pytest

    from l2s.errors import L2SError, UsageError
    from l2s.pipelines import SteeringPipeline

    absent = tmp_path / "not-loaded"            # a load would fail with "no diffusers pipeline"
    with pytest.raises(L2SError, match="'bogus' is not a torch device"):
        SteeringPipeline.from_pretrained(absent, "clf", device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(L2SError, match="CUDA is not available"):
            SteeringPipeline.from_pretrained(absent, "clf", device="cuda")
    with pytest.raises(UsageError, match="torch_dtype must be a torch.dtype .* got 'bf16'"):
        SteeringPipeline.from_pretrained(absent, "clf", torch_dtype="bf16")


def test_wrap_pipeline_refuses_flux_options_it_cannot_use():
    import pytest

    from l2s.errors import UsageError
    from l2s.pipelines import wrap_pipeline

    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    classifier = tiny_classifier_for(pipe, seed=0)
    for options, message in (({"steps": -3}, "steps must be a positive whole number"),
                             ({"steps": 0}, "got 0"), ({"steps": 2.5}, "got 2.5"),
                             ({"family": "flux-pro"}, "family must be one of flux-dev, flux-schnell"),
                             ({"engine": "fastest"}, "engine must be one of auto, eager")):
        with pytest.raises(UsageError, match=message):
            wrap_pipeline(pipe, classifier, **options)
    assert wrap_pipeline(pipe, classifier, steps=7, family="flux-dev").default_steps() == 7


def test_from_pretrained_passes_flux_options_on(tmp_path):
    from l2s.pipelines.loading import save_pipeline
    from l2s.pipelines import SteeringPipeline

    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    save_pipeline(pipe, tmp_path / "flux")
    steerer = SteeringPipeline.from_pretrained(tmp_path / "flux", tiny_classifier_for(pipe, seed=0), engine="eager",
                                               steps=3, family="flux-dev")
    assert (steerer.engine_kind, steerer.default_steps(), steerer.family) == ("eager", 3, "flux-dev")


def test_a_folder_naming_a_moved_component_module_is_refused_with_the_edit(tmp_path):
    import json

    import pytest

    from l2s.errors import ModelLoadError
    from l2s.pipelines.loading import _import_l2s_components

    with pytest.raises(ModelLoadError, match=r"write 'l2s\.shapes\.model' in its model_index\.json\)$"):
        _import_l2s_components({"vae": ["l2s.shapes_model", "PixelShuffleVAE"]}, tmp_path)
    with pytest.raises(ModelLoadError, match=r"cannot be imported: No module named 'l2s\.nowhere'$"):
        _import_l2s_components({"vae": ["l2s.nowhere", "X"]}, tmp_path)
    _import_l2s_components(json.loads('{"vae": ["l2s.shapes.model", "PixelShuffleVAE"]}'), tmp_path)


def test_a_folder_missing_a_component_it_names_is_refused_naming_it(tmp_path):
    import shutil

    import pytest

    from l2s.errors import ModelLoadError
    from l2s.pipelines import load_diffusers_pipeline
    from l2s.pipelines.loading import save_pipeline

    save_pipeline(tiny_flux_pipeline(seed=0), tmp_path / "flux")
    shutil.rmtree(tmp_path / "flux" / "tokenizer_2")   # transformers would build a tokenizer of no words
    with pytest.raises(ModelLoadError, match=r"lacks the folder tokenizer_2 that its model_index\.json names"):
        load_diffusers_pipeline(tmp_path / "flux")


def test_a_hub_cache_entry_given_as_the_model_folder_is_refused_naming_its_hub_id(tmp_path):
    import pytest

    from l2s.errors import ModelLoadError
    from l2s.pipelines import load_diffusers_pipeline

    entry = tmp_path / "models--black-forest-labs--FLUX.1-schnell"
    (entry / "snapshots" / "0123abcd").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"model_index\.json missing\); it is a Hugging Face cache entry: give "
                                             r"its hub id black-forest-labs/FLUX\.1-schnell \(or a folder in"):
        load_diffusers_pipeline(entry)


def test_from_pretrained_reads_the_classifier_first_and_refuses_one_of_another_model(tmp_path, monkeypatch):
    import pytest

    import l2s.pipelines.base
    from l2s.errors import ClassifierMismatchError, ModelLoadError
    from l2s.pipelines import SteeringPipeline
    from l2s.pipelines.loading import save_pipeline

    sd = tiny_sd_pipeline(seed=0)
    save_pipeline(sd, tmp_path / "sd")
    tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0).save(tmp_path / "flux-clf")
    with pytest.raises(ClassifierMismatchError, match=r"classifier expects 4 maps per object but this model provides"):
        SteeringPipeline.from_pretrained(tmp_path / "sd", tmp_path / "flux-clf")
    monkeypatch.setattr(l2s.pipelines.base, "load_diffusers_pipeline", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ModelLoadError, match=r"^classifier not found: "):
        SteeringPipeline.from_pretrained(tmp_path / "sd", tmp_path / "absent-clf")
