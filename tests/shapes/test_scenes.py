"""The shapes world's scenes: seeded layouts, rendering and relations."""
import numpy as np
import pytest

from l2s.errors import L2SError, UnsupportedRelationError
from l2s.evaluation import geneval_relations
from l2s.relations import DIAGONAL, DIRECTIONAL
from l2s.shapes import (
    BACKGROUND,
    COLOURS,
    GAP,
    SHAPES,
    Scene,
    SceneObject,
    ShapesDetector,
    random_scene,
    render,
    render_array,
    scene_for_relation,
    shape_template,
)


def test_random_scene_is_deterministic_for_a_seed():
    a = [random_scene(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    assert random_scene(np.random.default_rng(8)) != a[0]
    assert np.array_equal(render_array(a[0]), render_array(a[1]))


def test_random_scene_objects_inside_canvas_separated_and_distinct():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        scene = random_scene(rng, size=48, n_objects=(2, 5))
        counts.add(len(scene.objects))
        kinds = [(o.shape, o.colour) for o in scene.objects]
        assert len(set(kinds)) == len(kinds)
        for i, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
            for other in scene.objects[i + 1:]:
                a1, b1, a2, b2 = other.box
                assert x2 + GAP <= a1 or a2 + GAP <= x1 or y2 + GAP <= b1 or b2 + GAP <= y1
    assert counts == {2, 3, 4, 5}


def test_random_scene_restrictions_and_errors():
    rng = np.random.default_rng(1)
    scene = random_scene(rng, n_objects=3, allowed_shapes=["circle"], allowed_colours=["red", "blue", "green"])
    assert {o.shape for o in scene.objects} == {"circle"}
    assert {o.colour for o in scene.objects} <= {"red", "blue", "green"}
    with pytest.raises(L2SError, match="unknown shape"):
        random_scene(rng, allowed_shapes=["hexagon"])
    with pytest.raises(L2SError, match="distinct"):
        random_scene(rng, n_objects=3, allowed_shapes=["circle"], allowed_colours=["red", "blue"])
    with pytest.raises(L2SError, match="could not build"):
        random_scene(rng, size=20, n_objects=5, min_size=9, max_size=9, max_tries=5)


def test_render_exact_colours_and_boxes():
    for shape in SHAPES:
        for side in range(3, 30):
            scene = Scene(40, [SceneObject(shape, "blue", (4, 6, 4 + side, 6 + side))])
            pixels = render_array(scene)
            assert pixels.shape == (40, 40, 3) and pixels.dtype == np.uint8
            is_object = np.all(pixels == COLOURS["blue"], axis=-1)
            assert np.all(is_object | np.all(pixels == BACKGROUND, axis=-1))  # no blended pixels
            ys, xs = np.nonzero(is_object)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (4, 6, 4 + side, 6 + side), (shape, side)


def test_templates_have_their_fill_ratios():
    fill = {s: shape_template(s, 40, 40).mean() for s in SHAPES}
    assert fill["square"] == 1.0
    assert abs(fill["circle"] - np.pi / 4) < 0.03
    assert abs(fill["triangle"] - 0.5) < 0.04 and abs(fill["diamond"] - 0.5) < 0.04


def test_scene_relations_are_clean_only():
    scene = Scene(64, [SceneObject("circle", "red", (0, 20, 10, 30)),     # left
                       SceneObject("square", "blue", (40, 20, 50, 30)),   # right, same row
                       SceneObject("triangle", "green", (40, 50, 50, 60))])  # below-right of red
    relations = scene.relations()
    assert (0, "left of", 1) in relations and (1, "right of", 0) in relations
    assert (1, "above", 2) in relations and (2, "below", 1) in relations
    assert not any({i, j} == {0, 2} for i, _, j in relations)  # diagonal pair: ambiguous
    assert scene.caption(False) == "a red circle, a blue square and a green triangle"
    assert scene.caption(True) == "a red circle to the left of a blue square. a green triangle"
    assert scene.caption(True, relation=(2, "below", 1)) == \
        "a green triangle below a blue square. a red circle"
    assert Scene.from_dict(scene.to_dict()) == scene


def test_require_clean_pair():
    rng = np.random.default_rng(3)
    for _ in range(30):
        assert random_scene(rng, n_objects=2, require_clean_pair=True).relations()


@pytest.mark.parametrize("relation", DIRECTIONAL + DIAGONAL)
def test_scene_for_relation_holds_cleanly(relation):
    rng = np.random.default_rng(5)
    for _ in range(10):
        scene = scene_for_relation(rng, ("circle", "red"), relation, ("square", "blue"), size=48)
        a, b = scene.objects
        found = geneval_relations(a.box, b.box)
        assert relation in found
        if relation in DIRECTIONAL:
            assert found == {relation}
        assert ShapesDetector().detect(render(scene), [a.name, b.name])[a.name].box == a.box


def test_scene_for_relation_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(UnsupportedRelationError):
        scene_for_relation(rng, ("circle", "red"), "is", ("square", "blue"))
    with pytest.raises(L2SError, match="apart"):
        scene_for_relation(rng, ("circle", "red"), "above", ("circle", "red"))
    with pytest.raises(L2SError, match="colour"):
        scene_for_relation(rng, ("circle", "mauve"), "above", ("circle", "red"))
