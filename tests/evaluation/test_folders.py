"""Scoring a GenEval-layout image folder made elsewhere (``l2s eval --images``)."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from l2s.errors import L2SError
from l2s.evaluation import PromptSpec, RelationCheck, geneval_metadata, score_image_folder
from l2s.shapes import ShapesDetector, render, scene_for_relation

SPEC = PromptSpec("a red circle to the left of a blue square", (RelationCheck("red circle", "left of", "blue square"),))


def _geneval_folder(root, relation="left of", seed=0):
    """``root/00000``: SPEC's metadata and one image whose circle is ``relation`` the square."""
    scene = scene_for_relation(np.random.default_rng(seed), ("circle", "red"), relation, ("square", "blue"), size=48)
    (root / "00000" / "samples").mkdir(parents=True, exist_ok=True)
    (root / "00000" / "metadata.jsonl").write_text(json.dumps(geneval_metadata(SPEC)) + "\n")
    render(scene).save(root / "00000" / "samples" / "0000.png")
    return root


def _score(images, out):
    report = score_image_folder(images, ShapesDetector(), out, progress=False, contact_sheets=False)
    return report.modes["images"].summary


@pytest.mark.parametrize("written", ["pretty", "bom", "blank first line"])
def test_metadata_is_read_as_geneval_reads_it(tmp_path, written):
    images = _geneval_folder(tmp_path / "images")
    metadata = geneval_metadata(SPEC)
    text = {"pretty": json.dumps(metadata, indent=2), "bom": "\ufeff" + json.dumps(metadata),
            "blank first line": "\n" + json.dumps(metadata) + "\n"}[written]
    (images / "00000" / "metadata.jsonl").write_text(text, encoding="utf-8")
    assert _score(images, tmp_path / "out").n_correct == 1


def test_an_empty_metadata_file_is_refused_not_skipped(tmp_path):
    images = _geneval_folder(tmp_path / "images")
    (images / "00000" / "metadata.jsonl").write_text("\n")
    with pytest.raises(L2SError, match=r"00000/metadata.jsonl: .*\(the file is empty\)"):
        _score(images, tmp_path / "out")


def test_a_rerun_scores_an_image_that_replaced_a_scored_one(tmp_path):
    images = _geneval_folder(tmp_path / "images", relation="left of")
    assert _score(images, tmp_path / "out").n_correct == 1
    _geneval_folder(images, relation="right of")    # the other method's images, made again
    assert _score(images, tmp_path / "out").n_correct == 0


def test_a_16_bit_greyscale_image_is_scored_on_its_tones(tmp_path):
    spec = PromptSpec("a circle to the left of a square", (RelationCheck("circle", "left of", "square"),))
    images = _geneval_folder(tmp_path / "images")
    (images / "00000" / "metadata.jsonl").write_text(json.dumps(geneval_metadata(spec)) + "\n")
    png = images / "00000" / "samples" / "0000.png"
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(png)                  # 16-bit PNG, opened by PIL as "I;16"
    with Image.open(png) as saved:
        assert saved.mode == "I;16"
    assert _score(images, tmp_path / "out").n_correct == 1


def test_a_folder_not_in_genevals_layout_is_refused_saying_which_folder_was_meant(tmp_path):
    images = _geneval_folder(tmp_path / "images")
    meant = re.escape(str(images))
    with pytest.raises(L2SError, match=rf"one prompt's images \(00000\); pass the folder of all prompts, {meant}$"):
        _score(images / "00000" / "samples", tmp_path / "out")
    run = tmp_path / "run"
    (run / "steered").mkdir(parents=True)
    meant = re.escape(str(run / "steered"))
    with pytest.raises(L2SError, match=rf"an 'l2s eval' run; pass its image folder, {meant}$"):
        _score(run, tmp_path / "out")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "dog_left_of_cat.png")
    with pytest.raises(L2SError, match=r"it holds 1 loose image and no prompts; put each prompt's images in "
                                       r"<n>/samples/<seed>.png beside <n>/metadata.jsonl"):
        _score(flat, tmp_path / "out")


def test_a_prompt_the_rule_cannot_score_is_named_by_its_folder(tmp_path):
    images = _geneval_folder(tmp_path / "images")
    image = (images / "00000" / "samples" / "0000.png").read_bytes()
    (images / "00000" / "samples" / "0001.png").write_bytes(image)      # the first folder holds two images
    near = PromptSpec("a red circle next to a blue square", (RelationCheck("red circle", "next to", "blue square"),))
    (images / "00001" / "samples").mkdir(parents=True)
    (images / "00001" / "metadata.jsonl").write_text(json.dumps(near.to_dict()) + "\n")
    (images / "00001" / "samples" / "0000.png").write_bytes(image)
    with pytest.raises(L2SError, match=r"00001/metadata.jsonl \('a red circle next to a blue square'\): GenEval's "
                                       r"rule has no verdict for 'next to'"):
        _score(images, tmp_path / "out")


def test_a_record_from_before_image_digests_resumes_as_it_did(tmp_path):
    images = _geneval_folder(tmp_path / "images")
    _score(images, tmp_path / "out")
    record_path = tmp_path / "out" / "images" / "00000" / "samples" / "0000.json"
    record = json.loads(record_path.read_text())
    del record["meta"]["image_sha256"]                  # as a run made before the digest was recorded
    record_path.write_text(json.dumps(record))
    report = score_image_folder(images, ShapesDetector(), tmp_path / "out", progress=False, contact_sheets=False)
    assert [r.status for r in report.modes["images"].records] == ["resumed"]    # not every image scored again


def test_an_image_path_that_cannot_be_read_is_one_line(tmp_path):
    images = _geneval_folder(tmp_path / "images")
    (images / "00000" / "samples" / "0001.png").mkdir()       # a folder where an image should be
    with pytest.raises(L2SError, match=r"cannot read the image .*0001.png \(IsADirectoryError: Is a directory\)"):
        _score(images, tmp_path / "out")


def test_prompt_folders_without_images_are_listed_in_the_summary(tmp_path, caplog):
    images = _geneval_folder(tmp_path / "images")
    for name in ("00001", "00002"):                      # their prompts' images were never made
        (images / name).mkdir()
        (images / name / "metadata.jsonl").write_text(json.dumps(geneval_metadata(SPEC)) + "\n")
    assert _score(images, tmp_path / "out").n_images == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["folders_without_images"] == ["00001", "00002"]
    assert [r.getMessage() for r in caplog.records] == ["warning: 2 position-prompt folders have no samples/<n>.png "
                                                        "and are not scored (listed in summary.json): 00001, 00002"]
