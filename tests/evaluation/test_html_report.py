"""report.html of an evaluation run: numbers checked against independent formulas, the page parsed,
and rendered in a real headless browser (Chromium) with its images."""
import math
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from l2s.evaluation import PromptSpec, RelationCheck, run_eval
from l2s.evaluation.html_report import REPORT_FILE
from l2s.parsing import parse_prompt
from l2s.shapes import ShapesDetector, render, scene_for_relation
from l2s.steer import SteeringDiagnostics

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


class MixedSteerer:
    """Steered images show the prompted relation except for seed 3; base images only for seed 3."""

    def plan(self, prompt):
        return parse_prompt(prompt)

    def __call__(self, prompt, *, seed, steer, **kwargs):
        (t,) = parse_prompt(prompt).triplets
        right = (seed != 3) if steer else (seed == 3)
        scene = scene_for_relation(np.random.default_rng(seed), tuple(t.subject.split()[::-1]),
                                   t.relation if right else OPPOSITE[t.relation], tuple(t.object.split()[::-1]),
                                   size=48)
        return SimpleNamespace(images=[render(scene)], timings={"total": 0.1},
                               plan=SimpleNamespace(steered=True, parsed=parse_prompt(prompt)),
                               diagnostics=SteeringDiagnostics())


class Page(HTMLParser):
    """Table cells by table id, image sources, and headings."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.headings = {}, [], []
        self._table = self._row = None
        self._tag = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag == "img":
            self.images.append(attrs["src"])
        self._tag = tag

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        self._tag = None

    def handle_data(self, data):
        if self._tag in ("td", "th") and self._row is not None:
            self._row.append(data)
        elif self._tag == "h2":
            self.headings.append(data)


def _wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{centre - half:.3f}, {centre + half:.3f}]"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    specs = [PromptSpec(f"a red circle {rel} a blue square", (RelationCheck("red circle", rel, "blue square"),))
             for rel in ("left of", "above", "below")]
    run_eval(MixedSteerer(), specs, ShapesDetector(), out, seeds=[0, 1, 2, 3], progress=False,
             settings={"model": "fake"}, detector_name="shapes")
    return out


def test_report_numbers(run_dir):
    page = Page()
    page.feed((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    summary = {row[0]: row for row in page.tables["summary"][1:]}
    assert summary["steered"][1:3] == ["9/12 = 0.750", _wilson(9, 12)]
    assert summary["base"][1:3] == ["3/12 = 0.250", _wilson(3, 12)]
    paired = dict(page.tables["paired"][1:])
    sign_test = 2 * sum(math.comb(12, k) for k in range(4)) / 2 ** 12     # exact two-sided, 9 vs 3
    assert paired["steered right, base wrong"] == "9" and paired["base right, steered wrong"] == "3"
    assert paired["sign test p (two-sided, exact)"] == f"{sign_test:.4g}"
    relations = {row[0]: row[1:] for row in page.tables["relations"][1:]}
    assert relations["above"] == ["1/4 = 0.250", _wilson(1, 4), "3/4 = 0.750", _wilson(3, 4)]
    assert any(h.startswith("Worst failures (steered): 3 of 3") for h in page.headings)


def test_report_links_images_that_exist(run_dir):
    page = Page()
    page.feed((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    assert "contact_sheet_01.png" in page.images
    failures = [src for src in page.images if src.startswith("steered/")]
    assert len(failures) == 3 and all(src.endswith("0003.png") for src in failures)
    assert all((run_dir / src).is_file() for src in page.images)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Chromium for the headless-browser check (apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,3000",
                    (run_dir / REPORT_FILE).resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The shapes' blue only shows if the linked images loaded (the page's own styles have none).
    blue = (np.abs(pixels - np.array([40, 80, 220])).max(axis=-1) <= 12).sum()
    assert blue > 500


def test_the_settings_show_what_was_used_and_what_was_left_to_defaults():
    from l2s.evaluation.html_report import used_settings

    settings = {"num_inference_steps": 28, "height": None, "guidance_scale": None, "step_size": 2.0}   # run_eval's
    resolved = {"sampling": {"num_inference_steps": 28, "height": 512, "width": 512, "guidance_scale": 3.5,
                             "true_cfg_scale": 2.0, "negative_prompt": "blurry"},
                "schedule": {"name": "front-loaded", "iterations": [16, 1, 0, 1], "step_sizes": [2.0, 2.0, 2.0, 2.0]}}
    assert used_settings(settings, resolved) == [
        ("steps", "28"), ("height", "512 (model default)"), ("width", "512"),   # width: not recorded as asked
        ("guidance", "3.5 (model default)"), ("true CFG", "2.0, negative prompt 'blurry'"),
        ("schedule", "front-loaded: steps 0-1, 3 of 4 steered, 1 to 16 iterations each"), ("step size", "2.0")]
    assert used_settings({}, {"sampling": {"num_inference_steps": 4}}) == [("steps", "4")]   # a base-only run's


def test_a_run_whose_steerer_cannot_say_what_it_used_shows_only_its_settings(run_dir):
    page = Page()
    page.feed((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    assert "used" not in page.tables and "Settings" in page.headings


def test_a_scored_folders_report_claims_no_generation_and_no_base_mode(run_dir, tmp_path):
    from l2s.evaluation import score_image_folder

    score_image_folder(run_dir / "base", ShapesDetector(), tmp_path, progress=False, contact_sheets=False)
    text = (tmp_path / REPORT_FILE).read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    assert page.tables["summary"][0] == ["mode", "correct images", "95% Wilson interval", "mean score",
                                         "prompts with any correct"]
    assert "base mode" not in text and "Lowest scores first." in text
