"""Labelled relations from GQA scene graphs: spatial relations named by GQA ("to the left of", ...)
and object-attribute pairs for the neutral class "is"; ambiguous objects are dropped (a name that
occurs twice in the image, or that is a WordNet hypernym/hyponym of another object's name)."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from l2s.errors import L2SError
from l2s.relations import DIRECTIONAL, NEUTRAL, canonical_class
from .sources import RelationSample, clean_name, load_annotations

log = logging.getLogger(__name__)

# GQA attributes used for the neutral class (published list).
GQA_ATTRIBUTES = ("white", "green", "large", "metal")


def wordnet_is_a() -> Callable[[str, str], bool] | None:
    """The published is-a test on WordNet (a hypernym of ``a`` at depth 1-2 is a synset of ``b``),
    or None when nltk or its WordNet corpus is not installed."""
    try:
        from nltk.corpus import wordnet  # type: ignore[import-not-found]

        wordnet.synsets("dog")
    except Exception:  # ImportError, or LookupError when the corpus is missing
        return None

    def is_a(a: str, b: str) -> bool:
        targets = set(wordnet.synsets(b.replace(" ", "_"), pos=wordnet.NOUN))
        for synset in wordnet.synsets(a.replace(" ", "_"), pos=wordnet.NOUN):
            level = set(synset.hypernyms())
            for _ in range(2):
                if level & targets:
                    return True
                level = {h for s in level for h in s.hypernyms()}
        return False

    return is_a


def gqa_samples(
    scene_graphs: str | Path | dict | Sequence[str | Path],
    images_dir: str | Path,
    *,
    relations: Sequence[str] = DIRECTIONAL,
    attributes: Sequence[str] = GQA_ATTRIBUTES,
    is_a: Callable[[str, str], bool] | str | None = "wordnet",
    strict_images: bool = False,
) -> list[RelationSample]:
    """Labelled relations from GQA scene graphs (one JSON file, several merged, or a loaded dict).

    GQA format: ``{image_id: {"objects": {obj_id: {"name", "attributes": [...], "relations":
    [{"name", "object": obj_id}, ...]}}}}``. Relation names are mapped to canonical relations and
    kept when in ``relations``; attributes in ``attributes`` give neutral ("is") samples.

    An object is *ambiguous* (never used) when its name occurs more than once in the image, or
    when ``is_a`` says it is a kind of another object's name or vice versa (the published
    hypernym filter; "wordnet" uses nltk's WordNet when installed and otherwise logs a warning and
    skips this filter). ``strict_images`` drops whole images with any repeated name instead.
    Images are expected at ``images_dir/<image_id>.jpg``.
    """
    graphs = _scene_graphs(scene_graphs)
    if is_a == "wordnet":
        is_a = wordnet_is_a()
        if is_a is None:
            log.warning("nltk WordNet is not available: the GQA hypernym filter is skipped "
                        "(pip install nltk and download the 'wordnet' corpus to enable it)")
    wanted = {canonical_class(r) for r in relations}
    attribute_set = {clean_name(a) for a in attributes}
    images_dir = Path(images_dir)
    samples: list[RelationSample] = []
    for image_id in sorted(graphs):
        objects = graphs[image_id].get("objects", {}) or {}
        names = {oid: clean_name(obj.get("name", "")) for oid, obj in objects.items()}
        counts = Counter(names.values())
        if strict_images and any(n > 1 for n in counts.values()):
            continue
        image = _GqaImage(str(image_id), images_dir / f"{image_id}.jpg", objects, names,
                          _ambiguous_names(counts, is_a))
        samples += image.samples(wanted, attribute_set)
    return samples


def _scene_graphs(scene_graphs: str | Path | dict | Sequence[str | Path]) -> dict:
    if isinstance(scene_graphs, dict):
        return scene_graphs
    paths = [scene_graphs] if isinstance(scene_graphs, (str, Path)) else list(scene_graphs)
    graphs: dict = {}
    for path in paths:  # the published preprocessing merges GQA's train and val graphs
        graphs.update(load_annotations(path))
    return graphs


def _ambiguous_names(counts: Counter, is_a: Callable[[str, str], bool] | None) -> set[str]:
    """Names never used: repeated or empty, or a kind of another object's name (or vice versa)."""
    ambiguous = {name for name, n in counts.items() if n > 1 or not name}
    if callable(is_a):
        distinct = sorted(counts)
        for a in distinct:
            for b in distinct:
                if a != b and is_a(a, b):
                    ambiguous.update((a, b))
    return ambiguous


@dataclass
class _GqaImage:
    """One image's scene graph, with its object names resolved and the ambiguous ones known."""

    image_id: str
    path: Path
    objects: dict
    names: dict
    ambiguous: set[str]

    def samples(self, wanted: set[str], attributes: set[str]) -> list[RelationSample]:
        samples: list[RelationSample] = []
        seen: set[tuple[str, str, str]] = set()
        for oid in sorted(self.objects):
            subject = self.names[oid]
            if subject in self.ambiguous:
                continue
            for rel in self.objects[oid].get("relations", []) or []:
                relation, target = self._relation(rel), self.names.get(rel.get("object"))
                if relation not in wanted or target is None or target in self.ambiguous or target == subject:
                    continue
                if (subject, relation, target) not in seen:
                    seen.add((subject, relation, target))
                    samples.append(RelationSample(self.image_id, self.path, subject, relation, target, "gqa"))
            for attribute in self.objects[oid].get("attributes", []) or []:
                attribute = clean_name(attribute)
                if attribute in attributes and (subject, NEUTRAL, attribute) not in seen:
                    seen.add((subject, NEUTRAL, attribute))
                    samples.append(RelationSample(self.image_id, self.path, subject, NEUTRAL, attribute, "gqa"))
        return samples

    @staticmethod
    def _relation(rel: dict) -> str | None:
        """The canonical relation of a GQA relation name, or None for one we do not classify."""
        try:
            return canonical_class(str(rel.get("name", "")))
        except L2SError:
            return None  # "on", "holding", ...
