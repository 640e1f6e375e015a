"""Resumable map-dataset creation, the dataset reader, conversions and ``l2s make-data``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from l2s.cli.training import make_data_main, train_main
from l2s.training import (
    AttentionMapDataset,
    RelationSample,
    load_dataset_meta,
    make_dataset,
    resize_map_dataset,
    split_of,
    write_map_dataset,
)
from l2s.errors import L2SError
from l2s.training.sources import digest
from l2s.training.store import committed_rows
from l2s.demo import tiny_flux_pipeline, tiny_sd_pipeline

SEQ = 64  # short T5 padding keeps the tiny inversions fast


RELATIONS = ("left of", "above", "below", "right of")


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    for i in range(6):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"this is not a PNG file")
    return root


def _samples(images: Path) -> list[RelationSample]:
    samples = [RelationSample(f"img{i}", images / f"img{i}.png", "cat", RELATIONS[i % 4], "dog", "test")
               for i in range(6)]
    samples.insert(2, RelationSample("broken", images / "broken.png", "cat", "left of", "dog", "test"))
    # A second relation of img0 (must share img0's split) and a neutral attribute sample.
    samples.append(RelationSample("img0", images / "img0.png", "dog", "right of", "cat", "test"))
    samples.append(RelationSample("img1", images / "img1.png", "car", "is", "white", "test"))
    samples.append(RelationSample("img9", images / "missing.png", "cat", "above", "dog", "test"))
    return samples


MAKE = dict(steps=4, store_steps=(1, 3), size=32, shard_size=3, val_fraction=0.5, seed=7,
            max_sequence_length=SEQ, progress=False)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _all_maps(out: Path) -> dict[str, torch.Tensor]:
    maps = {}
    for shard in sorted((out / "shards").glob("*.safetensors")):
        maps.update(load_file(str(shard)))
    return maps


@pytest.fixture(scope="module")
def full_run(flux, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    make_dataset(_samples(images), flux, out, **MAKE)
    return out


def test_interrupted_creation_resumes_to_the_same_dataset(flux, images, full_run, tmp_path):
    out = tmp_path / "resumed"

    class Killed(Exception):
        pass

    def kill_at(index):
        def hook(i):
            if i == index:
                raise Killed

        return hook

    # Killed while processing chunk 2 (samples 6-8): chunks 0 and 1 are committed.
    with pytest.raises(Killed):
        make_dataset(_samples(images), flux, out, on_sample=kill_at(7), **MAKE)
    committed = json.loads((out / "progress.json").read_text())["chunks"]
    assert sorted(committed) == ["0", "1"]
    # What a kill between "shard renamed" and "progress written" leaves: an uncommitted shard,
    # its manifest lines, a torn line and a temporary file.
    save_file({"bogus": torch.zeros(1)}, str(out / "shards" / "shard-00002.safetensors"))
    stray = dict(_manifest(out)[0], chunk=2, shard="shards/shard-00002.safetensors", sample_id="bogus", key="bogus")
    with open(out / "manifest.jsonl", "a") as handle:
        handle.write(json.dumps(stray) + "\n" + '{"sample_id": "torn')
    (out / "shards" / "shard-00003.safetensors.tmp").write_bytes(b"partial")
    # And a committed shard that went missing: its chunk must be redone, not lost.
    (out / "shards" / "shard-00000.safetensors").unlink()

    summary = make_dataset(_samples(images), flux, out, **MAKE)

    expected, got = _manifest(full_run), _manifest(out)
    by_id = lambda rows: sorted(rows, key=lambda r: r["sample_id"])  # noqa: E731
    assert by_id(got) == by_id(expected)
    assert len({r["sample_id"] for r in got}) == len(got)  # nothing duplicated
    reference, resumed = _all_maps(full_run), _all_maps(out)
    assert sorted(resumed) == sorted(reference)
    for key, tensor in reference.items():
        assert resumed[key].dtype == tensor.dtype == torch.float16
        assert torch.equal(resumed[key], tensor), key
    assert not list((out / "shards").glob("*.tmp"))
    assert summary.records == len(expected) and summary.skipped == 2
    assert summary.samples_resumed == 3      # chunk 1 kept; chunk 0 lost its shard and was made again
    assert f"in {out}; 3 of them an earlier run had made (resumed); reconstruction PSNR" in summary.line()
    # The picture is drawn from the committed shards: the resumed dataset's is the uninterrupted one's.
    assert (out / "preview.png").read_bytes() == (full_run / "preview.png").read_bytes()
    # A finished dataset resumes to a no-op.
    again = make_dataset(_samples(images), flux, out, **MAKE)
    assert again.records == summary.records and _manifest(out) == got
    assert again.samples_resumed == again.samples_done and "(resumed)" in again.line()
    assert "resumed" not in make_dataset(_samples(images), flux, tmp_path / "new", **MAKE).line()


def test_a_rerun_retries_samples_whose_image_file_was_fixed(flux, images, full_run, tmp_path, caplog):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    out, samples = tmp_path / "data", _samples(folder)
    first = make_dataset(samples, flux, out, **MAKE)
    assert first.skipped == 2  # broken.png and missing.png
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.safetensors")}
    again = make_dataset(samples, flux, out, **MAKE)  # nothing changed: nothing is redone
    assert again.skipped == 2 and {p.name: p.read_bytes() for p in (out / "shards").glob("*.safetensors")} == shards
    shutil.copy(folder / "img3.png", folder / "broken.png")   # chunk 0 of 4: redone, its lines appended
    caplog.clear()
    fixed = make_dataset(samples, flux, out, **MAKE)
    assert "retrying 1 chunk" in caplog.text
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["image_id"] for s in skipped] == ["img9"]
    assert fixed.skipped == 1 and fixed.records == first.records + 4  # dual, two stored steps
    assert {r["image_id"] for r in _manifest(out)} >= {"broken"}
    assert [r["chunk"] for r in _manifest(out)][-1] == 0      # the file's order; readers see chunk order
    chunks = [r["chunk"] for r in committed_rows(out, full_check=True)]
    assert len(chunks) == fixed.records and chunks == sorted(chunks)


def test_records_are_dual_and_labelled_with_the_true_relation(full_run):
    rows = _manifest(full_run)
    meta = json.loads((full_run / "dataset.json").read_text())
    # 8 readable samples x (pos + neg) x 2 stored steps.
    assert len(rows) == 8 * 2 * 2
    assert meta["channels"] == 4 and meta["store_steps"] == [1, 3] and meta["map_size"] == 16
    by_sample: dict[str, list[dict]] = {}
    for r in rows:
        by_sample.setdefault(r["sample_key"], []).append(r)
        assert r["label_index"] == meta["class_names"].index(r["label"])
        if not (r["label"] == "is" and r["prompt_type"] == "pos"):  # "A white car" has no relation word
            assert f" {r['relation_word']} a " in r["prompt"]
    for key, group in by_sample.items():
        assert {r["prompt_type"] for r in group} == {"pos", "neg"}
        assert len({r["label"] for r in group}) == 1  # both prompts keep the true label
        pos = [r for r in group if r["prompt_type"] == "pos"]
        neg = [r for r in group if r["prompt_type"] == "neg"]
        assert all(r["relation_word"] == r["label"] for r in pos)
        assert all(r["relation_word"] != r["label"] for r in neg)
        assert sorted(r["timestep"] for r in pos) == [1, 3]
    neutral = by_sample["test:img1:car|is|white"]
    assert {r["prompt"] for r in neutral if r["prompt_type"] == "pos"} == {"A white car"}
    assert all((r["subject"], r["object"]) == ("car", "white") for r in neutral)


def test_unreadable_images_are_skipped_with_a_reason(full_run):
    skipped = [json.loads(line) for line in (full_run / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["image_id"]: s["reason"] for s in skipped}
    assert set(reasons) == {"broken", "img9"}
    assert "unreadable image" in reasons["broken"] and "not found" in reasons["img9"]
    assert not any(r["image_id"] in reasons for r in _manifest(full_run))


def test_splits_are_by_source_image(full_run):
    rows = _manifest(full_run)
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["image_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {r["split"] for r in rows} == {"train", "val"}
    assert len([r for r in rows if r["image_id"] == "img0"]) == 8  # its two relations, same split
    ids = [f"image-{i}" for i in range(2000)]
    val = [i for i in ids if split_of(i, 0, 0.2) == "val"]
    assert 0.17 < len(val) / len(ids) < 0.23
    assert val == [i for i in ids if split_of(i, 0, 0.2) == "val"]  # deterministic
    assert val != [i for i in ids if split_of(i, 1, 0.2) == "val"]  # seeded


def test_dataset_reader_filters_and_returns_float_maps(full_run):
    everything = AttentionMapDataset(full_run, split=None)
    assert len(everything) == 32
    maps, step, label = everything[0]
    assert maps.shape == (2, 4, 16, 16) and maps.dtype == torch.float32 and step in (1, 3)
    stored = load_file(str(full_run / everything.records[0]["shard"]))[everything.records[0]["key"]]
    assert torch.equal(maps, stored.float())
    train = AttentionMapDataset(full_run, "train", timesteps=[3], prompt_types=["pos"])
    assert len(train) > 0 and all(r["timestep"] == 3 and r["prompt_type"] == "pos" and r["split"] == "train"
                                  for r in train.records)
    with pytest.raises(L2SError, match="not classes"):
        AttentionMapDataset(full_run, None, class_names=("above", "below"))


def test_a_rerun_with_more_samples_grows_the_dataset_to_the_one_made_at_once(flux, images, full_run, tmp_path):
    out = tmp_path / "grown"
    make_dataset(_samples(images)[:7], flux, out, **MAKE)          # chunks of 3, 3 and a partial 1
    summary = make_dataset(_samples(images), flux, out, **MAKE)    # the partial chunk is made again, whole
    by_id = lambda rows: sorted(rows, key=lambda r: r["sample_id"])  # noqa: E731
    assert by_id(_manifest(out)) == by_id(_manifest(full_run))
    reference, grown = _all_maps(full_run), _all_maps(out)
    assert sorted(grown) == sorted(reference) and all(torch.equal(grown[k], v) for k, v in reference.items())
    assert summary.records == len(_manifest(full_run))
    reordered = _samples(images)
    reordered[0], reordered[1] = reordered[1], reordered[0]
    with pytest.raises(L2SError, match=r"the samples of chunk 0 differ from those of the run that wrote .*"
                                       r"more may follow them, to resume, or start over with --restart"):
        make_dataset(reordered, flux, out, **MAKE)
    with pytest.raises(L2SError, match=r"had more samples than this one \(4 chunks against 2\); pass them all"):
        make_dataset(_samples(images)[:6], flux, out, **MAKE)     # fewer samples, ending on a chunk boundary
    whole = tmp_path / "whole-chunks"
    make_dataset(_samples(images)[:6], flux, whole, **MAKE)        # the earlier run's last chunk was full
    make_dataset(_samples(images), flux, whole, **MAKE)
    assert by_id(_manifest(whole)) == by_id(_manifest(full_run))


def test_resuming_with_other_settings_is_refused(flux, images, full_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    with pytest.raises(L2SError, match=r"other settings \(dual: True -> False\)"):
        make_dataset(_samples(images), flux, copy, **{**MAKE, "dual": False})
    with pytest.raises(L2SError, match=r"other settings \(dtype: 'float16' -> 'float32'\)"):
        make_dataset(_samples(images), flux, copy, **{**MAKE, "dtype": "float32"})


def test_no_dual_writes_only_correct_prompts(flux, images, tmp_path):
    samples = [s for s in _samples(images) if s.image_id in ("img0", "img3")]
    make_dataset(samples, flux, tmp_path / "pos", **{**MAKE, "dual": False, "dtype": "float32"})
    rows = _manifest(tmp_path / "pos")
    assert len(rows) == 3 * 2 and {r["prompt_type"] for r in rows} == {"pos"}
    assert all(t.dtype == torch.float32 for t in _all_maps(tmp_path / "pos").values())


def test_sd_dataset_and_psnr_filter(images, tmp_path):
    sd = tiny_sd_pipeline(seed=0)
    samples = [RelationSample("img0", images / "img0.png", "cat", "above", "dog", "test")]
    settings = dict(steps=4, store_steps=(1, 3), size=32, num_iter=2, progress=False)
    summary = make_dataset(samples, sd, tmp_path / "sd", **settings)
    meta = json.loads((tmp_path / "sd" / "dataset.json").read_text())
    assert summary.records == 4 and meta["channels"] == 14 and meta["model_family"] == "sd14"
    for maps in _all_maps(tmp_path / "sd").values():
        assert maps.shape == (2, 14, 16, 16)
        assert torch.allclose(maps.float().sum(dim=(-2, -1)), torch.ones(2, 14), atol=1e-2)  # renormalised
    strict = make_dataset(samples, sd, tmp_path / "strict", min_psnr=99.0, **settings)
    assert strict.records == 0 and strict.skipped == 1
    assert "PSNR" in (tmp_path / "strict" / "skipped.jsonl").read_text()


def test_make_data_cli(images, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "img0.png", "prompt": "a cat above a dog"}) + "\n")
    out = tmp_path / "cli"
    code = make_data_main(["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images",
                           str(images), "--out", str(out), "--steps", "4", "--store-steps", "1", "3", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert len(_manifest(out)) == 4 and "4 records" in err
    assert "l2s: warning: no validation records (--val-fraction 0.15 of 1 samples)" in err   # one image: train only
    assert train_main([str(out), "--out", str(out), "--quiet"]) == 2   # the dataset's own folder
    assert f"l2s: error: {out} holds a map dataset ('make-data'); this run writes a classifier training run" \
        in capsys.readouterr().err
    common = ["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images", str(images),
              "--steps", "4", "--quiet"]
    for flags, said in ((["--size", "33"], "--size must be a multiple of 2 pixels"),
                        (["--store-steps", "9"], "--store-steps 9 must lie in [0, 4) for --steps 4"),
                        (["--device", "cuda:7"], "--device 'cuda:7': ")):
        assert make_data_main([*common, "--out", str(tmp_path / "other"), *flags]) == 2
        assert said in capsys.readouterr().err.splitlines()[-1], flags
    assert make_data_main(["--source", "coco", "--annotations", str(tmp_path / "nope.json"), "--out",
                           str(out)]) == 2
    assert f"--annotations {tmp_path / 'nope.json'}: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        make_data_main(["--help"])
    assert exit_info.value.code == 0
    assert "--no-dual" in capsys.readouterr().out


def test_make_data_without_images_keeps_no_dataset_and_says_why_images_went_missing(images, tmp_path,
                                                                                     monkeypatch, capsys):
    pairs = images / "pairs-relative.jsonl"   # beside the images: the paths are relative to that folder
    pairs.write_text(json.dumps({"image": "img0.png", "prompt": "a cat above a dog"}) + "\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    base = ["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--steps", "4", "--store-steps",
            "1", "--quiet", "--out"]
    assert make_data_main(base + [str(tmp_path / "maps")]) == 2
    assert capsys.readouterr().err == (
        f"l2s: error: the image file to invert is missing ({tmp_path / 'elsewhere' / 'img0.png'}): the images are "
        f"not in {tmp_path / 'elsewhere'}; nothing was inverted; without --images, relative image paths resolve "
        f"against the current directory: pass --images with the folder they are relative to (e.g. --images {images}, "
        "the annotations' folder)\n")
    assert not (tmp_path / "maps").exists()    # no empty dataset left to resume
    assert make_data_main(base + [str(tmp_path / "maps"), "--images", str(images)]) == 0


def test_a_wrong_images_folder_is_refused_in_one_line_before_anything_is_written(images, tmp_path, capsys):
    """It once printed one 'skipped ... image not found' line per sample: 100k lines on COCO."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"img{i % 6}-{i}.png", "prompt": "a cat above a dog"}) + "\n"
                             for i in range(40)) + json.dumps({"image": "img0-0.png", "prompt": "a cat"}) + "\n")
    (tmp_path / "wrong").mkdir()       # the pair without a relation is recorded at once, then forgotten here
    out = tmp_path / "maps"
    argv = ["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images", str(tmp_path / "wrong"),
            "--steps", "4", "--store-steps", "1", "--quiet", "--out", str(out)]
    assert make_data_main(argv) == 2
    assert capsys.readouterr().err == (
        f"l2s: error: all 40 image files to invert are missing (the first: {tmp_path / 'wrong' / 'img0-0.png'})"
        f": the images are not in {tmp_path / 'wrong'}; nothing was inverted; --images must be the folder the "
        "annotations' image paths are relative to\n")
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    assert make_data_main(argv + ["--restart"]) == 2 and sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_the_images_are_looked_for_until_a_dataset_holds_records(images, tmp_path):
    from l2s.training import check_dataset_images

    gone = [RelationSample(f"g{i}", tmp_path / f"g{i}.png", "cat", "above", "dog") for i in range(4)]
    there = [RelationSample("img0", images / "img0.png", "cat", "above", "dog")]
    twice = gone + [RelationSample(s.image_id, s.image, "dog", "below", "cat") for s in gone]
    with pytest.raises(L2SError, match=r"^all 4 image files to invert are missing \(the first: .*g0.png\)"):
        check_dataset_images(twice, tmp_path / "maps")        # a file of several samples is counted once
    check_dataset_images(gone + there, tmp_path / "maps")     # one found: the run goes on, skipping the others
    later = [RelationSample(f"h{i}", tmp_path / f"h{i}.png", "cat", "above", "dog") for i in range(40)] + there
    check_dataset_images(later, tmp_path / "maps")   # a partial download: its first 40 files missing, not all
    (tmp_path / "maps").mkdir()
    progress = {"chunks": {"0": {"records": 0, "skipped": 2}}}
    (tmp_path / "maps" / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(L2SError, match="image files to invert are missing"):   # no image was ever found
        check_dataset_images(gone, tmp_path / "maps")
    progress["chunks"]["1"] = {"records": 4, "skipped": 0}
    (tmp_path / "maps" / "progress.json").write_text(json.dumps(progress))
    check_dataset_images(gone, tmp_path / "maps")    # they were found once: a resume skips those gone since
    with pytest.raises(L2SError, match="image files to invert are missing"):
        check_dataset_images(gone, tmp_path / "maps", restart=True)


def test_skipped_samples_are_logged_a_few_then_counted(tmp_path, caplog):
    from l2s.training.samples import Job, invert_chunk

    members = [RelationSample(f"i{i}", tmp_path / f"i{i}.png", "cat", "above", "dog") for i in range(9)]
    job = Job(None, ("to the left of", "to the right of"), 0, True, 0.5, None, "float16", {}, tmp_path, 9)
    with caplog.at_level("WARNING", logger="l2s.training.samples"):
        _, _, records, skipped = invert_chunk(job, 0, members, type("Bar", (), {"update": lambda self: None})())
    assert not records and len(skipped) == 9    # every reason is kept in skipped.jsonl
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(": ")[0] for line in lines[:5]] == [f"skipped custom:i{i}:cat|above|dog" for i in range(5)]
    assert lines[5:] == [f"more samples skipped: not listed here, each with its reason in {tmp_path / 'skipped.jsonl'}"
                         "; the summary line counts them"]


def test_pairs_without_a_relation_are_said_a_few_then_only_recorded_and_counted(images, tmp_path, capsys,
                                                                                 caplog):
    """A captions file given as pairs once printed one warning per caption."""
    captions = [{"image": f"img{i % 6}.png", "prompt": f"a photo of a cat number {i}"} for i in range(12)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(line) + "\n" for line in [{"image": "img0.png", "prompt": "a cat above a dog"},
                                                                  *captions]))
    out = tmp_path / "maps"
    argv = ["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images", str(images), "--steps",
            "4", "--store-steps", "1", "--quiet", "--out", str(out)]
    with caplog.at_level("WARNING", logger="l2s.training"):
        assert make_data_main(argv) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(": no spatial")[0] for line in lines[:5]] == [
        f"skipped {pairs} line {i} (img{(i - 2) % 6})" for i in range(2, 7)]
    assert lines[5:] == [f"more pairs skipped: not listed here, each with its reason in {out / 'skipped_pairs.jsonl'}"
                         "; the summary line counts them"]
    summary = capsys.readouterr().err.splitlines()[0]
    assert f"(0 skipped; 12 pairs skipped before inversion, listed in skipped_pairs.jsonl) in {out}; " in summary
    recorded = [json.loads(line) for line in (out / "skipped_pairs.jsonl").read_text().splitlines()]
    assert [r["pair"] for r in recorded] == [f"{pairs} line {i} (img{(i - 2) % 6})" for i in range(2, 14)]
    assert recorded[0]["reason"] == "no spatial relation found in 'a photo of a cat number 0'"
    pairs.write_text("".join(json.dumps(line) + "\n" for line in captions))      # nothing left to invert
    assert make_data_main(argv[:-1] + [str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "l2s: error: the annotations gave no usable labelled relation (every one of the 12 pairs was skipped: see "
        f"{tmp_path / 'none' / 'skipped_pairs.jsonl'})")
    assert len((tmp_path / "none" / "skipped_pairs.jsonl").read_text().splitlines()) == 12


def test_make_data_resumes_with_the_datasets_own_shard_size(images, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "img0.png", "prompt": "a cat above a dog"}) + "\n")
    argv = ["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images", str(images), "--steps",
            "4", "--store-steps", "1", "--quiet", "--out", str(tmp_path / "maps")]
    assert make_data_main(argv + ["--shard-size", "1"]) == 0
    capsys.readouterr()
    assert make_data_main(argv) == 0   # not refused as 'shard_size: 1 -> 16': the dataset's size is the default
    assert "1 of them an earlier run had made (resumed)" in capsys.readouterr().err
    assert make_data_main(argv + ["--shard-size", "2"]) == 2   # another size, asked for, is refused
    assert "(shard_size: 1 -> 2)" in capsys.readouterr().err


def test_make_data_records_the_model_folder_resolved_and_resumes_under_another_spelling(images, tmp_path,
                                                                                          monkeypatch, capsys):
    from l2s.demo import tiny_flux_pipeline
    from l2s.pipelines.loading import save_pipeline

    save_pipeline(tiny_flux_pipeline(seed=0), tmp_path / "flux")
    (tmp_path / "link").symlink_to(tmp_path / "flux")
    monkeypatch.chdir(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "img0.png", "prompt": "a cat above a dog"}) + "\n")
    argv = ["--source", "pairs", "--annotations", str(pairs), "--images", str(images), "--steps", "4",
            "--store-steps", "1", "--quiet", "--out", str(tmp_path / "maps"), "--model"]
    assert make_data_main(argv + ["flux"]) == 0
    meta = tmp_path / "maps" / "dataset.json"
    assert json.loads(meta.read_text())["settings"]["model"] == str(tmp_path / "flux")   # what 'train' names
    for spelling in ("./flux/", "link"):
        assert make_data_main(argv + [spelling]) == 0, capsys.readouterr().err
    recorded = json.loads(meta.read_text())          # a dataset an earlier version made records it as typed
    recorded["settings"]["model"] = "flux"
    recorded["settings_hash"] = digest(json.dumps(recorded["settings"], sort_keys=True))[:16]
    meta.write_text(json.dumps(recorded))
    progress = tmp_path / "maps" / "progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "settings_hash": recorded["settings_hash"]}))
    capsys.readouterr()
    assert make_data_main(argv + [str(tmp_path / "flux")]) == 0, capsys.readouterr().err
    assert json.loads(meta.read_text())["settings"]["model"] == "flux"


def test_make_data_resumes_a_dataset_that_recorded_a_hub_id_with_its_snapshot_folder(images, hub_cache, tmp_path,
                                                                                       capsys):
    from tests.hub_cache import cached_tiny_flux

    snapshot = str(cached_tiny_flux(hub_cache, tmp_path / "classifier").resolve())
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "img0.png", "prompt": "a cat above a dog"}) + "\n")
    argv = ["--source", "pairs", "--annotations", str(pairs), "--images", str(images), "--steps", "4",
            "--store-steps", "1", "--quiet", "--out", str(tmp_path / "maps"), "--model"]
    assert make_data_main(argv + ["someone/tiny-flux"]) == 0, capsys.readouterr().err
    meta = tmp_path / "maps" / "dataset.json"
    assert json.loads(meta.read_text())["settings"]["model"] == snapshot          # what loaded
    recorded = json.loads(meta.read_text())          # as an earlier version recorded it: the hub id as typed
    recorded["settings"]["model"] = "someone/tiny-flux"
    recorded["settings_hash"] = digest(json.dumps(recorded["settings"], sort_keys=True))[:16]
    meta.write_text(json.dumps(recorded))
    progress = tmp_path / "maps" / "progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "settings_hash": recorded["settings_hash"]}))
    capsys.readouterr()
    assert make_data_main(argv + [snapshot]) == 0, capsys.readouterr().err
    assert json.loads(meta.read_text())["settings"]["model"] == "someone/tiny-flux"   # kept as the dataset spelled it


def test_the_weights_dtype_is_recorded_and_a_dataset_made_before_still_resumes(flux, images, full_run, tmp_path):
    assert load_dataset_meta(full_run)["settings"]["weights_dtype"] == "float32"   # what the denoiser ran in
    out = tmp_path / "older"
    shutil.copytree(full_run, out)
    meta, progress = out / "dataset.json", out / "progress.json"
    recorded = json.loads(meta.read_text())          # as an earlier version wrote it: no weights dtype
    del recorded["settings"]["weights_dtype"]
    recorded["settings_hash"] = digest(json.dumps(recorded["settings"], sort_keys=True))[:16]
    meta.write_text(json.dumps(recorded))
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "settings_hash": recorded["settings_hash"]}))
    summary = make_dataset(_samples(images), flux, out, **MAKE)
    assert summary.samples_resumed == summary.samples_done
    assert "weights_dtype" not in load_dataset_meta(out)["settings"]


def test_a_dataset_resized_to_another_grain_keeps_its_records_and_resizes_as_capture_does(tmp_path):
    from l2s.capture import resize_maps_for_classifier

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 2, 3, 16, 16, generator=g)
    records = [{"label": "above" if i % 2 else "below", "timestep": (1, 3)[i % 2], "split": ("train", "val")[i // 4],
                "prompt_type": ("pos", "neg")[i % 2], "sample_key": f"image-{i // 2}"} for i in range(6)]
    layout = [["transformer_blocks.0.attn", 3, [16, 16]]]
    source = write_map_dataset(tmp_path / "16", records, maps, class_names=["above", "below"], shard_size=4,
                               num_steps=4, model_family="flux-schnell", layer_layout=layout)
    resized = resize_map_dataset(source, tmp_path / "8", 8, shard_size=5)  # other shard boundaries
    meta, source_meta = load_dataset_meta(resized), load_dataset_meta(source)
    assert meta["map_size"] == 8 and meta["orig_map_size"] == 16 and meta["layer_layout"] == layout
    assert meta["store_steps"] == [1, 3] and meta["num_steps"] == 4 and meta["model_family"] == "flux-schnell"
    assert meta["settings"]["resized_from"] == source_meta["settings_hash"]
    assert meta["settings"]["synthetic"] is True  # passed on from the source (make-data datasets: False)
    before, after = AttentionMapDataset(source, None), AttentionMapDataset(resized, None)
    assert len(after) == 6
    for i in range(6):
        kept = ("sample_id", "key", "split", "prompt_type", "sample_key", "label", "timestep")
        assert {k: after.records[i][k] for k in kept} == {k: before.records[i][k] for k in kept}
        m, step, label = after[i]
        assert (step, label) == before[i][1:] and m.shape == (2, 3, 8, 8)
        expected = resize_maps_for_classifier([(maps[i], (16, 16))], 8)
        assert torch.allclose(m, expected) and torch.allclose(m.sum(dim=(-2, -1)), torch.ones(2, 3), atol=1e-4)
    with pytest.raises(L2SError, match="already has 16x16 maps"):
        resize_map_dataset(source, tmp_path / "again", 16)


def test_the_summary_warns_of_an_empty_split():
    from pathlib import Path

    from l2s.training import DatasetSummary

    summary = DatasetSummary(Path("maps"), records=48, samples_done=8, skipped=0, split_records={"train": 48})
    assert summary.warning("make more scenes (--scenes)") == (
        "l2s: warning: the val split is empty: training needs both; make more scenes (--scenes)")
    both = DatasetSummary(Path("maps"), records=48, samples_done=8, skipped=0, split_records={"train": 40, "val": 8})
    assert both.warning("x") is None
    assert DatasetSummary(Path("maps"), records=0, samples_done=0, skipped=3).warning("x") is None   # said otherwise


def test_the_summary_counts_the_splits_beside_the_records_not_the_samples(tmp_path):
    """It once read "96 records ... from 24 samples (0 skipped, train 76, val 20)": 76 of 24 samples."""
    from l2s.training.dataset import DatasetSummary

    line = DatasetSummary(tmp_path, 96, 24, 0, {"train": 76, "val": 20}).line()
    assert line == (f"l2s: 96 records (a map stack per stored step and prompt; train 76, val 20) from 24 samples "
                    f"(0 skipped) in {tmp_path}")


@pytest.mark.parametrize("name, build", [("tiny", tiny_flux_pipeline), ("tiny-sd", tiny_sd_pipeline)])
def test_make_data_help_says_the_tiny_models_default_size(name, build):
    """--help once said 256 for every schnell-like model, while 'make-data --model tiny' inverts at 32 px."""
    from l2s.cli.training import build_make_data_parser
    from l2s.training.inversion_utils import default_image_size

    size_help = next(a.help for a in build_make_data_parser()._actions if "--size" in a.option_strings)
    assert f"{name} {default_image_size(build())}" in " ".join(size_help.split())


def test_the_preview_shows_each_samples_image_and_its_phrases_mean_maps_from_the_shards(full_run, images):
    """preview.png: a row per sample (the first committed), its image, then the subject's and the
    object's map (mean over channels) at the last stored step, true word then wrong word."""
    from l2s.evaluation.attention_pictures import overlay
    from l2s.training.preview import first_samples

    rows = committed_rows(full_run)
    picture = Image.open(full_run / "preview.png").convert("RGB")
    chosen = first_samples(rows, 3)
    assert len(chosen) == 8 and list(chosen) == list(dict.fromkeys(r["sample_key"] for r in rows))[:8]
    cell_w, cell_h = 128 + 8, 128 + 8 + 4 * 12 + 4          # captioned_grid's cells of 128 px pictures
    assert picture.width == 5 * cell_w
    top = picture.height - 8 * cell_h                         # under the title
    maps = _all_maps(full_run)
    for row, prompts in enumerate(list(chosen.values())[:2]):
        sample = next(s for s in _samples(images) if s.key == prompts["pos"]["sample_key"])
        image = Image.open(sample.image).convert("RGB")        # 32 px: inverted as it is
        means = {kind: maps[prompts[kind]["key"]].float().mean(dim=1).numpy() for kind in ("pos", "neg")}
        scale = max(float(m.max()) for m in means.values())
        for column, (kind, phrase) in enumerate([("pos", 0), ("pos", 1), ("neg", 0), ("neg", 1)], start=1):
            x, y = column * cell_w + 4, top + row * cell_h + 4
            drawn = np.asarray(picture.crop((x, y, x + 128, y + 128)))
            assert np.array_equal(drawn, np.asarray(overlay(image, means[kind][phrase], scale, 128))), (row, column)


def test_first_samples_are_the_first_eight_committed_at_the_step_asked():
    from l2s.training.preview import first_samples

    rows = [{"sample_key": f"s{i}", "timestep": step, "prompt_type": kind}
            for i in range(10) for step in (1, 3) for kind in ("pos", "neg")]
    chosen = first_samples(rows, 3)
    assert list(chosen) == [f"s{i}" for i in range(8)]
    assert all(set(prompts) == {"pos", "neg"} and prompts["pos"]["timestep"] == 3 for prompts in chosen.values())


def test_a_restart_removes_the_preview_with_the_dataset(full_run, tmp_path, caplog):
    from l2s.training.writer import clear_dataset

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    clear_dataset(out)
    assert not (out / "preview.png").exists() and "preview.png" in caplog.text


def test_the_summary_says_the_reconstruction_psnr_and_names_a_sample_below_the_published_filter(tmp_path):
    from l2s.training.dataset import DatasetSummary, reconstruction

    rows = [{"psnr": 24.0, "image_id": "a", "prompt": "a cat above a dog"},
            {"psnr": 18.5, "image_id": "b", "prompt": "a dog below a cat"},
            {"psnr": 21.5, "image_id": "c", "prompt": "a car left of a tree"}]
    low = reconstruction(rows, "flux-schnell")
    assert low.text() == ("reconstruction PSNR mean 21.3 dB, min 18.5 dB (b 'a dog below a cat': below the "
                          "published 20 dB filter)")
    assert reconstruction(rows, "sd14").text().endswith("below the published 19.5 dB filter)")
    assert reconstruction(rows[::2], "flux-dev").text() == "reconstruction PSNR mean 22.8 dB, min 21.5 dB"
    assert reconstruction(rows[1:2], None).text() == "reconstruction PSNR mean 18.5 dB, min 18.5 dB"  # no filter
    assert reconstruction([{"label": "above"}], "flux-schnell") is None        # maps made without inversion
    line = DatasetSummary(tmp_path, 6, 1, 0, {"train": 6}, psnr=low).line()
    assert line.endswith(f"in {tmp_path}; {low.text()}")


def test_make_data_says_the_datasets_psnr_and_the_preview_it_wrote(images, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"img{i}.png", "prompt": f"a cat {word} a dog"}) + "\n"
                             for i, word in enumerate(("above", "below"))))
    out = tmp_path / "maps"
    assert make_data_main(["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images",
                           str(images), "--out", str(out), "--steps", "4", "--store-steps", "1", "3", "--quiet",
                           "--threads", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    psnr = [r["psnr"] for r in _manifest(out)]
    worst = min(_manifest(out), key=lambda r: r["psnr"])
    assert err[0].endswith(f"reconstruction PSNR mean {np.mean(psnr):.1f} dB, min {min(psnr):.1f} dB "
                           f"({worst['image_id']} {worst['prompt']!r}: below the published 20 dB filter)")
    assert err[-1] == (f"l2s: wrote dataset.json, manifest.jsonl, preview.png, progress.json, skipped.jsonl and "
                       f"shards/: 1 file in {out}")
    assert Image.open(out / "preview.png").size[0] == 5 * (128 + 8)      # image, then 2 maps per prompt
