"""The shapes world's exact detector: boxes and labels on clean and degraded renders."""
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from l2s.errors import L2SError
from l2s.evaluation import Detector
from l2s.shapes import BACKGROUND, COLOURS, Scene, SceneObject, ShapesDetector, random_scene, render


def _box_error(found, expected) -> float:
    return max(abs(a - b) for a, b in zip(found, expected))


def _detection_rate(scenes, images, tolerance):
    """Share of objects found with the right label and a box within ``tolerance`` pixels."""
    detector = ShapesDetector()
    hits = total = 0
    for scene, image in zip(scenes, images):
        found = detector.detect(image, [obj.name for obj in scene.objects])
        for obj in scene.objects:
            total += 1
            det = found[obj.name]
            hits += det is not None and _box_error(det.box, obj.box) <= tolerance
    return hits / total


def test_detector_recovers_boxes_on_300_clean_renders():
    """Acceptance criterion: exact labels and boxes on >= 99% of objects (both canvas sizes)."""
    assert isinstance(ShapesDetector(), Detector)
    for size, seed in ((64, 11), (32, 12)):
        rng = np.random.default_rng(seed)
        scenes = [random_scene(rng, size=size) for _ in range(300)]
        rate = _detection_rate(scenes, [render(s) for s in scenes], tolerance=1)
        assert rate >= 0.99, (size, rate)


def _degrade(image, rng, noise=0.0, blur=0.0, jpeg=None):
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, noise, (image.height, image.width, 3))
    out = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    if blur:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    if jpeg:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=jpeg)
        out = Image.open(buffer).convert("RGB")
    return out


@pytest.mark.parametrize("degradation", [dict(noise=10.0), dict(noise=10.0, blur=0.6), dict(noise=10.0, jpeg=90)])
def test_detector_survives_noise_blur_and_jpeg(degradation):
    rng = np.random.default_rng(21)
    scenes = [random_scene(rng, size=64) for _ in range(150)]
    images = [_degrade(render(s), rng, **degradation) for s in scenes]
    assert _detection_rate(scenes, images, tolerance=2) >= 0.97


def test_detector_labels_colour_only_shape_only_and_missing():
    scene = Scene(64, [SceneObject("circle", "red", (2, 2, 20, 20)),
                       SceneObject("triangle", "red", (30, 30, 40, 40)),
                       SceneObject("diamond", "cyan", (40, 2, 60, 22))])
    found = ShapesDetector().detect(render(scene), ["red", "a red triangle", "diamond", "blue square", "red square"])
    assert found["red"].box == (2, 2, 20, 20)  # the largest red component
    assert found["a red triangle"].box == (30, 30, 40, 40) and found["a red triangle"].score == 1.0
    assert found["diamond"].box == (40, 2, 60, 22)
    assert found["blue square"] is None and found["red square"] is None
    with pytest.raises(L2SError, match="cannot look for"):
        ShapesDetector().detect(render(scene), ["dog"])


def test_detector_ignores_foreign_colours_and_wrong_shapes():
    image = Image.new("RGB", (64, 64), BACKGROUND)
    pixels = np.asarray(image).copy()
    pixels[10:30, 10:30] = (20, 20, 20)  # a black square: no palette colour
    pixels[40:50, 40:60] = COLOURS["green"]  # a 2:1 green rectangle: a stretched "square"
    found = ShapesDetector().detect(Image.fromarray(pixels), ["green", "green circle", "red"])
    assert found["green"].box == (40, 40, 60, 50)
    assert found["green circle"] is None and found["red"] is None



def test_count_and_extra_objects_see_an_object_drawn_twice():
    from l2s.evaluation import PromptSpec, RelationCheck
    from l2s.shapes.verdicts import extra_objects

    one = [SceneObject("circle", "red", (4, 4, 16, 16)), SceneObject("square", "blue", (40, 40, 52, 52))]
    two = one + [SceneObject("circle", "red", (40, 4, 52, 16))]
    detector = ShapesDetector()
    spec = PromptSpec("a red circle to the left of a blue square",
                      (RelationCheck("red circle", "left of", "blue square"),))
    images = [render(Scene(64, objects)) for objects in (one, two)]
    assert [detector.count(image, "red circle") for image in images] == [1, 2]
    assert [detector.count(image, label) for label in ("red", "circle", "square", "blue circle")
            for image in images[1:]] == [2, 2, 1, 0]
    assert [extra_objects(detector, image, spec) for image in images] == [False, True]
    same_colour = PromptSpec("a red circle to the left of a red square",
                             (RelationCheck("red circle", "left of", "red square"),))
    red_pair = render(Scene(64, [one[0], SceneObject("square", "red", (40, 40, 52, 52))]))
    assert not extra_objects(detector, red_pair, same_colour)   # two red objects named: two red blobs are right
