"""The steering objective on a tiny FLUX transformer: log p(target) of a latent, differentiable in it."""
import pytest
import torch

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.engines import example_flux_inputs
from l2s.errors import UsageError
from l2s.steer import SteeringObjective, SteeringPlan

TEXT_TOKENS, GRID = 16, (4, 4)


@pytest.fixture(scope="module")
def setup():
    pipe = tiny_flux_pipeline(seed=0)
    classifier = tiny_classifier_for(pipe, seed=1)
    plan = SteeringPlan.from_prompt("a cat above a dog", pipe.tokenizer_2, TEXT_TOKENS,
                                    classifier.config.class_names)
    inputs = example_flux_inputs(pipe.transformer, latent_grid=GRID, text_tokens=TEXT_TOKENS)
    return pipe, classifier, plan, inputs


def log_prob_and_grad(objective, plan, inputs, relation=0):
    def run_denoiser(z):
        return objective.denoiser(**{**inputs, "hidden_states": z}, return_dict=False)[0]

    z = inputs["hidden_states"].clone().requires_grad_(True)
    with objective.at_step(plan, 0, run_denoiser, TEXT_TOKENS, GRID) as log_prob:
        value = log_prob(z, relation)
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


def test_log_prob_is_a_per_image_log_probability_differentiable_in_the_latent(setup):
    pipe, classifier, plan, inputs = setup
    assert plan.pairs == [(0, 1)] and plan.steered
    objective = SteeringObjective(pipe.transformer, classifier)
    value, grad = log_prob_and_grad(objective, plan, inputs)
    assert value.shape == (1,) and bool((value < 0).all())
    assert grad.shape == inputs["hidden_states"].shape and grad.abs().sum() > 0
    # the capture is on the denoiser only inside at_step
    assert type(pipe.transformer.transformer_blocks[0].attn.processor).__name__ == "FluxAttnProcessor"
    assert objective.map_channels() == classifier.config.channels


def test_fast_and_reference_modes_compute_the_same_objective(setup):
    pipe, classifier, plan, inputs = setup
    fast = log_prob_and_grad(SteeringObjective(pipe.transformer, classifier, "fast"), plan, inputs)
    reference = log_prob_and_grad(SteeringObjective(pipe.transformer, classifier, "reference"), plan, inputs)
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast[1], reference[1], rtol=1e-3, atol=1e-6)
    with pytest.raises(UsageError, match="execution mode"):
        SteeringObjective(pipe.transformer, classifier, "turbo")


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_map_channels_counts_without_installing_a_capture(setup, mode):
    """A check (``check_arguments``, ``check_classifier``) may run in one thread while another's steered
    step has its capture on the model; before, it installed one of its own and raised 'already has a
    capture installed' (and the steered step, installing after it, could too)."""
    from diffusers.models.attention_processor import AttnProcessor

    from l2s.capture import AttentionCapture
    from l2s.errors import L2SError

    pipe, classifier, _, _ = setup
    objective = SteeringObjective(pipe.transformer, classifier, mode)
    with AttentionCapture(pipe.transformer) as running:         # another call's steered step
        installed = dict(pipe.transformer.attn_processors)
        assert objective.map_channels() == classifier.config.channels
        assert pipe.transformer.attn_processors == installed and running.layer_names
    attention = pipe.transformer.transformer_blocks[0].attn
    stock = attention.processor
    attention.set_processor(AttnProcessor())                    # not one a capture can replace: still refused
    try:
        with pytest.raises(L2SError, match="only the stock diffusers processors"):
            objective.map_channels()
    finally:
        attention.set_processor(stock)
