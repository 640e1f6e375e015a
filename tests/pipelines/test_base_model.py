"""A classifier whose training record names another model than the one it steers: one warning naming
both (a transfer such as FLUX.1-dev <-> schnell is a use), a refusal across FLUX and Stable Diffusion,
and nothing for classifiers saved before the record."""
import json
import logging

import pytest

from l2s.classifier import RelationClassifier
from l2s.demo import tiny_classifier_for, tiny_flux_pipeline, tiny_sd_pipeline
from l2s.errors import ClassifierMismatchError
from l2s.pipelines import SteeringPipeline, wrap_pipeline
from l2s.pipelines.arguments import base_model_warning
from l2s.pipelines.loading import save_pipeline

PROMPT = "a cat above a dog"
STEERED = dict(num_inference_steps=1, schedule="front-loaded", progress=False)
DOUBT = ": it reads maps it was not trained on (steering may be weaker)"


def _trained_on(pipe, **record):
    """A classifier fitting ``pipe``'s maps whose training record says ``record``."""
    classifier = tiny_classifier_for(pipe, seed=1)
    classifier.training_record = record
    return classifier


@pytest.fixture(scope="module")
def schnell():
    return tiny_flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def dev():
    return tiny_flux_pipeline(seed=0, guidance_embeds=True)


def test_a_classifier_of_another_family_steers_it_saying_so_once(schnell, dev, caplog):
    steerer = wrap_pipeline(dev, _trained_on(schnell, model="tiny", model_family="flux-schnell"))
    steerer.check_classifier()               # a transfer between FLUX models is a use: no error
    with caplog.at_level(logging.WARNING, logger="l2s"):
        first = steerer(PROMPT, **STEERED)
        again = steerer(PROMPT, seed=1, **STEERED)
    line = "the classifier was trained on maps of tiny (flux-schnell) but steers a flux-dev model" + DOUBT
    assert [r.getMessage() for r in caplog.records] == ["warning: " + line]      # said once per pipeline
    assert first.report()["steered"] and first.report()["warnings"] == again.report()["warnings"] == [line]
    assert steerer(PROMPT, steer=False, num_inference_steps=1, progress=False).report()["warnings"] == []


def test_a_model_from_another_folder_of_the_same_family_is_not_doubted(schnell, tmp_path):
    # A copy of the same weights elsewhere would warn falsely: folders are not compared, families are.
    save_pipeline(schnell, tmp_path / "a")
    save_pipeline(tiny_flux_pipeline(seed=1), tmp_path / "b")      # the same architecture, other weights
    _trained_on(schnell, model=str(tmp_path / "a"), model_family="flux-schnell").save_pretrained(tmp_path / "clf")
    other = SteeringPipeline.from_pretrained(tmp_path / "b", tmp_path / "clf")
    assert base_model_warning(other.pipe, other.classifier) is None
    dev = _trained_on(schnell, model=str(tmp_path / "a"), model_family="flux-dev")
    assert base_model_warning(other.pipe, dev) == (
        f"the classifier was trained on maps of {(tmp_path / 'a').resolve()} (flux-dev) but steers "
        f"{(tmp_path / 'b').resolve()} (flux-schnell)" + DOUBT)


def test_classifiers_saved_before_the_record_load_and_steer_without_a_word(schnell, dev, tmp_path, caplog):
    tiny_classifier_for(schnell, seed=1).save(tmp_path / "old")            # no training.json at all
    tiny_classifier_for(schnell, seed=1).save(tmp_path / "older-run")      # an 'l2s train' record of before
    (tmp_path / "older-run" / "training.json").write_text(json.dumps({"dataset": "/gone", "best_epoch": 3}))
    for folder in ("old", "older-run"):
        steerer = wrap_pipeline(dev, RelationClassifier.load(tmp_path / folder))
        with caplog.at_level(logging.WARNING, logger="l2s"):
            assert steerer(PROMPT, **STEERED).report()["warnings"] == []
        assert not caplog.records


def test_a_classifier_of_one_architecture_is_refused_on_the_other(schnell):
    sd = tiny_sd_pipeline(seed=0)
    # Stable Diffusion's channel count and no layer names: only the record tells FLUX maps trained it.
    steerer = wrap_pipeline(sd, _trained_on(sd, model="tiny", model_family="flux-schnell"))
    message = (r"^the classifier was trained on maps of tiny \(flux-schnell\), a FLUX model, but this is a Stable "
               r"Diffusion model \(sd14\): their maps differ; use a classifier trained for this model$")
    with pytest.raises(ClassifierMismatchError, match=message):
        steerer.check_classifier()
    with pytest.raises(ClassifierMismatchError, match=message):
        steerer(PROMPT, **STEERED)
    with pytest.raises(ClassifierMismatchError, match=r"a Stable Diffusion model, but this is a FLUX model"):
        wrap_pipeline(schnell, _trained_on(schnell, model_family="sd14")).check_classifier()


def test_the_shapes_world_is_one_model_whichever_folder_holds_it(schnell):
    from l2s.shapes import load_shapes_pipeline, shipped_assets

    classifier = _trained_on(schnell, model="shapes-world", model_family="flux-schnell")
    assert base_model_warning(load_shapes_pipeline(shipped_assets().pipeline), classifier) is None
    assert base_model_warning(schnell, classifier) == (
        "the classifier was trained on maps of shapes-world but steers a flux-schnell model" + DOUBT)


def test_the_shipped_shapes_classifier_steers_the_shipped_model_without_a_word():
    from l2s.shapes import load_shapes_pipeline, shipped_assets

    assets = shipped_assets()
    classifier = RelationClassifier.load(assets.classifier)
    assert base_model_warning(load_shapes_pipeline(assets.pipeline), classifier) is None


def test_a_shipped_shapes_classifier_on_another_model_says_so(schnell, dev):
    from l2s.shapes.recipes import SHIPPED_CLASSIFIERS, classifier_folder

    for name in SHIPPED_CLASSIFIERS:     # their training records name the shapes world
        classifier = RelationClassifier.load(classifier_folder(name))
        assert base_model_warning(schnell, classifier) == (
            "the classifier was trained on maps of shapes-world but steers a flux-schnell model" + DOUBT)
        assert base_model_warning(dev, classifier) == (
            "the classifier was trained on maps of shapes-world (flux-schnell) but steers a flux-dev model" + DOUBT)
