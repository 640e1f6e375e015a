"""The diffusers-native Stable Diffusion steering pipeline against stock diffusers, on a tiny random SD."""
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

from l2s.demo import tiny_classifier_for, tiny_sd_pipeline
from l2s.pipelines.native import StableDiffusionRelationSteeringPipeline

SIZE = dict(height=32, width=32)
PROMPTS = ["a cat above a dog", "a dog to the left of a cat"]


@pytest.fixture(scope="module")
def stock():
    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(stock):
    classifier = tiny_classifier_for(stock, seed=1)
    with torch.no_grad():   # a random classifier reads maps of ~1/T per pixel: amplify them
        classifier.object_extractor.input_projection.weight.mul_(3000.0)
    pipe = StableDiffusionRelationSteeringPipeline.from_pipe(stock, classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(count):
    return [torch.Generator().manual_seed(k) for k in range(count)]


def test_unsteered_output_equals_stock_sd(stock, pipe):
    kwargs = dict(num_inference_steps=2, num_images_per_prompt=2, output_type="np", **SIZE)
    expected = stock(PROMPTS, generator=_generators(4), negative_prompt=["blurry"] * 2, **kwargs).images
    # one negative prompt string serves every prompt (stock SD wants a list as long as the prompts)
    got = pipe(PROMPTS, generator=_generators(4), negative_prompt="blurry", steer=False, **kwargs).images
    assert np.array_equal(got, expected)
    assert pipe.config.requires_safety_checker is False and pipe.steering_family() == "sd14"


def test_steers_each_prompt_and_restores_the_unet(pipe):
    before = [p.requires_grad for p in pipe.unet.parameters()], list(pipe.unet.attn_processors.values())
    seen = []
    kwargs = dict(num_inference_steps=2, num_images_per_prompt=2, output_type="np", **SIZE)
    steered = pipe(PROMPTS, generator=_generators(4), callback_on_step_end=lambda p, i, t, kw: seen.append(i) or kw,
                   **kwargs)
    plain = pipe(PROMPTS, generator=_generators(4), steer=False, **kwargs)
    assert seen == [0, 1] and not np.array_equal(steered.images, plain.images)
    for steering in steered.steering:
        records = steering.diagnostics.for_step(0)
        assert all(b > a for a, b in zip(records[0].target_probability, records[-1].target_probability))
    assert ([p.requires_grad for p in pipe.unet.parameters()], list(pipe.unet.attn_processors.values())) == before


def test_steers_later_steps_under_another_scheduler(stock, pipe):
    from l2s.steer import custom_schedule

    euler = StableDiffusionRelationSteeringPipeline.from_pipe(
        pipe, scheduler=EulerDiscreteScheduler.from_config(stock.scheduler.config))
    euler.set_progress_bar_config(disable=True)
    result = euler("a dog below a cat", relations=[("dog", "below", "cat")], num_inference_steps=3,
                   steering_schedule=custom_schedule(3, steered=[0, 2], iterations=2, step_size=5.0),
                   generator=torch.Generator().manual_seed(0), output_type="np", **SIZE)
    assert sorted({r.step for r in result.steering[0].diagnostics.records}) == [0, 2]
    assert np.isfinite(result.images).all()


def test_steered_start_draws_the_noise_at_the_called_schedules_scale(stock, pipe):
    """A sigma-scaled scheduler (Euler, "leading" spacing) holds the previous call's sigmas until
    this call sets its own: the start must use this call's, so a vanishing step size gives the
    stock image whatever ran before."""
    euler = StableDiffusionRelationSteeringPipeline.from_pipe(
        pipe, scheduler=EulerDiscreteScheduler.from_config(stock.scheduler.config, timestep_spacing="leading"),
        steering_step_size=1e-30)
    euler.set_progress_bar_config(disable=True)
    plain = StableDiffusionPipeline(**{k: v for k, v in euler.components.items() if k != "classifier"})
    plain.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=4, output_type="np", **SIZE)
    euler(PROMPTS[0], generator=torch.Generator().manual_seed(0), num_inference_steps=50, output_type="np", **SIZE)
    steered = euler(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    expected = plain(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(steered - expected).max() < 1e-5


def test_loads_as_a_diffusers_custom_pipeline(stock, pipe, tmp_path, monkeypatch):
    import sys

    import diffusers.utils.dynamic_modules_utils as dynamic
    from diffusers import DiffusionPipeline

    from l2s.pipelines.loading import save_pipeline
    from l2s.pipelines.native import custom_pipeline_file

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))   # not the user's cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    save_pipeline(stock, tmp_path / "sd")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "sd", custom_pipeline=custom_pipeline_file("stable-diffusion"),
                                               trust_remote_code=True, classifier=pipe.classifier)
    assert type(loaded).__name__ == "StableDiffusionRelationSteeringPipeline" and loaded.steering_family() == "sd14"


def test_from_pipe_refuses_a_mode_that_compiles_flux_only(stock):
    from l2s.errors import UsageError

    with pytest.raises(UsageError, match="compiles FLUX's steered forward.*steering_mode='fast'"):
        StableDiffusionRelationSteeringPipeline.from_pipe(stock, steering_mode="fast+compiled")


def test_a_classifier_of_flux_maps_is_refused_at_the_first_steered_call(stock):
    from l2s.errors import ClassifierMismatchError

    classifier = tiny_classifier_for(stock, seed=1)          # SD's channel count, no layer names
    classifier.training_record = {"model": "tiny", "model_family": "flux-schnell"}
    pipe = StableDiffusionRelationSteeringPipeline.from_pipe(stock, classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ClassifierMismatchError, match=r"a FLUX model, but this is a Stable Diffusion model \(sd"):
        pipe("a cat above a dog", num_inference_steps=1, **SIZE)
    pipe("a cat above a dog", num_inference_steps=1, steer=False, **SIZE)       # unsteered: nothing to refuse


def test_a_diffusers_callback_object_runs_as_on_the_stock_pipeline(stock, pipe):
    from diffusers.callbacks import SDCFGCutoffCallback

    seen = []

    class Recording(SDCFGCutoffCallback):
        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append(sorted(callback_kwargs))
            return super().callback_fn(pipeline, step_index, timestep, callback_kwargs)

    kwargs = dict(num_inference_steps=4, output_type="np", **SIZE)
    expected = stock(PROMPTS[0], generator=torch.Generator().manual_seed(0),
                     callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5), **kwargs).images
    got = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0),
               callback_on_step_end=Recording(cutoff_step_ratio=0.5), steer=False, **kwargs).images
    steered = pipe(PROMPTS[0], callback_on_step_end=Recording(cutoff_step_ratio=0.5), **kwargs)
    assert np.array_equal(got, expected) and steered.steering[0].outcome.steered
    assert seen == [["prompt_embeds"]] * 8     # its own tensor_inputs, not the latents steering adds


def test_steers_with_attention_slicing_and_gives_the_slicing_back():
    stock = tiny_sd_pipeline(seed=0)
    stock.set_progress_bar_config(disable=True)
    stock.enable_attention_slicing(1)
    classifier = tiny_classifier_for(stock, seed=1)
    pipe = StableDiffusionRelationSteeringPipeline.from_pipe(stock, classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    processors = dict(pipe.unet.attn_processors)
    kwargs = dict(num_inference_steps=2, output_type="np", **SIZE)
    expected = stock(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), **kwargs).steering[0].outcome.steered
    assert all(pipe.unet.attn_processors[name] is p for name, p in processors.items())
    assert np.array_equal(pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), steer=False, **kwargs).images,
                          expected)


@pytest.mark.parametrize("mode, backend", [("fast", "sdpa"), ("fast", "native"), ("reference", "sdpa")])
def test_steers_a_fused_qkv_unet_as_the_unfused_one_and_unfuses_after(mode, backend):
    def steered(fused: bool):
        stock = tiny_sd_pipeline(seed=0)
        classifier = tiny_classifier_for(stock, seed=1)
        with torch.no_grad():
            classifier.object_extractor.input_projection.weight.mul_(3000.0)
        pipe = StableDiffusionRelationSteeringPipeline.from_pipe(stock, classifier=classifier, steering_mode=mode,
                                                                 capture_backend=backend)
        pipe.set_progress_bar_config(disable=True)
        if fused:
            pipe.fuse_qkv_projections()     # the UNet's and the VAE's attention: FusedAttnProcessor2_0
        result = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np",
                      **SIZE)
        return pipe, result

    expected = steered(fused=False)[1]
    pipe, got = steered(fused=True)
    assert got.steering[0].outcome.steered
    np.testing.assert_allclose(got.images, expected.images, rtol=0, atol=1e-5)
    processors = list(pipe.unet.attn_processors.values())
    assert {type(p).__name__ for p in processors} == {"FusedAttnProcessor2_0"}
    pipe.unfuse_qkv_projections()
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    again = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np",
                 **SIZE)
    np.testing.assert_allclose(again.images, expected.images, rtol=0, atol=1e-5)
