"""MapRecorder: each object's map before and after every steered step, without changing the result."""
import numpy as np
import torch

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.pipelines import wrap_pipeline
from l2s.pipelines.attention_maps import MapRecorder
from l2s.steer import custom_schedule


def test_recorder_sees_each_steered_step_and_changes_nothing():
    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    classifier = tiny_classifier_for(pipe, seed=1)
    with torch.no_grad():
        classifier.object_extractor.input_projection.weight.mul_(3000.0)
    steerer = wrap_pipeline(pipe, classifier)
    kwargs = dict(num_inference_steps=3, height=32, width=32, seed=2, progress=False, num_images=2,
                  schedule=custom_schedule(3, steered=[0, 2], iterations=3, step_size=1.0))
    plain = steerer("a red cat above a dog", **kwargs)
    with MapRecorder(steerer) as recorder:
        observed = steerer("a red cat above a dog", **kwargs)
    assert "steer_step" not in vars(steerer)                       # detached: the class's method again
    assert [np.asarray(i).tolist() for i in observed.images] == [np.asarray(i).tolist() for i in plain.images]
    assert [m.step for m in recorder.steps] == [0, 2]
    first = recorder.steps[0]
    assert first.phrases == ["red cat", "dog"] and first.before.shape == (2, 2, 16, 16)
    assert torch.allclose(first.before.sum(dim=(-2, -1)), torch.ones(2, 2))
    assert not torch.allclose(first.before, first.after)         # steering moved the attention
    assert not torch.allclose(first.before[:, 0], first.before[:, 1])   # two objects, two maps
