"""Classifiers on the Hugging Face Hub's terms: ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub`` through huggingface_hub's ``PyTorchModelHubMixin``, with a model card.

The folder is l2s's own format (``model.safetensors`` + ``config.json``, and ``training.json`` when
the training record is known) plus the card, ``README.md``; folders written by ``save`` load too.
A hub id loads through the local cache, downloading only when allowed (``HF_HUB_OFFLINE`` unset and
``local_files_only=False``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from l2s.errors import L2SError, ModelLoadError

from .config import FAMILY_CHANNELS

TRAINING_FILE = "training.json"  # the training run's record (settings, data, accuracy)


class ClassifierHubMixin(PyTorchModelHubMixin, library_name="l2s", license="apache-2.0",
                         tags=["l2s", "learn-to-steer", "spatial-relations", "text-to-image"]):
    """What :class:`~l2s.classifier.RelationClassifier` gets from the hub."""

    # The training run's record when known (from training.json or given to save_pretrained).
    training_record: dict | None = None

    def _save_pretrained(self, save_directory: Path) -> None:
        self.save(save_directory)  # model.safetensors + config.json, l2s's own format
        if self.training_record:
            (Path(save_directory) / TRAINING_FILE).write_text(json.dumps(self.training_record, indent=2) + "\n")

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """``PyTorchModelHubMixin.push_to_hub``; where the hub cannot be reached (offline mode, no
        network) one ``L2SError`` line says so and how to upload later, not the HTTP client's error."""
        from huggingface_hub.errors import OfflineModeIsEnabled

        try:
            return super().push_to_hub(repo_id, **kwargs)
        except (OfflineModeIsEnabled, *_transport_errors()) as error:
            detail = (str(error).splitlines() or [""])[0]
            why = ("offline mode is on (HF_HUB_OFFLINE)" if isinstance(error, OfflineModeIsEnabled)
                   else f"the hub cannot be reached ({type(error).__name__}: {detail})")
            raise L2SError(f"cannot push to {repo_id}: {why}; save_pretrained(FOLDER) now and run "
                           f"`hf upload {repo_id} FOLDER` once online") from error

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs):
        """A classifier from a folder or a hub id (the local cache first; ``HF_HUB_OFFLINE=1`` or
        ``local_files_only=True``: the cache only). Missing or damaged files: ``ModelLoadError``."""
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled

        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
            raise ModelLoadError(not_cached(str(pretrained_model_name_or_path), "classifier")) from error
        except HFValidationError:
            raise ModelLoadError(f"classifier not found: {pretrained_model_name_or_path} is neither a "
                                 "folder nor a hub id") from None

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, map_location: str = "cpu", config=None,
                         **unused: Any):
        from huggingface_hub import constants, snapshot_download

        folder = Path(model_id)
        if not folder.is_dir():
            # One listing of the repository fetches what it has of l2s's files (training.json is
            # optional); without a connection the cached snapshot serves at once, where a download of
            # each file would retry the missing optional one for half a minute.
            folder = Path(snapshot_download(
                repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                local_files_only=local_files_only, token=token,
                allow_patterns=[constants.CONFIG_NAME, constants.SAFETENSORS_SINGLE_FILE, TRAINING_FILE]))
        return cls.load(folder, map_location=map_location)

    def generate_model_card(self, *args, training: dict | None = None, **kwargs) -> ModelCard:
        """The card: what the classifier reads (map layout), how it was trained, and how well."""
        info = self._hub_mixin_info
        data = ModelCardData(**info.model_card_data.to_dict())
        body = model_card_body(self.config, training or self.training_record)
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _transport_errors() -> tuple[type[Exception], ...]:
    """The connection errors of the HTTP client huggingface_hub uses (httpx2 from its 2.0, httpx before)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def read_training_record(folder: Path) -> dict | None:
    path = Path(folder) / TRAINING_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_base_model(record: dict | None) -> tuple[str | None, str | None]:
    """(model, family) whose maps trained a classifier, as its training record names them: ``model`` as
    make-data recorded it (a folder, a hub id, "tiny", "shapes-world"), ``model_family`` a published
    family ("flux-dev", ...). None where it says nothing (classifiers saved before it was recorded)."""
    record = record if isinstance(record, dict) else {}
    model, family = record.get("model"), record.get("model_family")
    return (model if isinstance(model, str) and model else None,
            family if family in FAMILY_CHANNELS else None)


def base_model_text(model: str | None, family: str | None, with_family: bool = False) -> str:
    """How a line names a model: by name ("MODEL (FAMILY)" ``with_family``), else "a FAMILY model"."""
    if model and family and with_family:
        return f"{model} ({family})"
    return model or f"a {family} model"


def looks_like_hub_id(name: str) -> bool:
    """"owner/name" with no other slash: how the hub names a repository."""
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "~"))


def not_cached(name: str, what: str) -> str:
    """One line: ``name`` is no folder and not in the local Hugging Face cache, and how to get it."""
    from huggingface_hub import constants

    return (f"{what} {name!r} is not a folder, and not in the local Hugging Face cache ({constants.HF_HUB_CACHE}): "
            f"download it once with `hf download {name}` (set HF_HOME to use another cache), "
            "or pass a local folder")


def cache_entry_hub_id(entry: str) -> str | None:
    """The hub id a Hugging Face cache entry's folder name (``models--owner--name``) stands for, else None."""
    if not entry.startswith("models--"):
        return None
    return entry[len("models--"):].replace("--", "/", 1)   # hub names hold no "--"


def cache_entry_note(folder: str | Path) -> str:
    """For a Hugging Face cache entry (``models--owner--name`` holding ``snapshots/``), given where a
    model folder belongs: "; " and what to give instead. Empty for any other folder."""
    folder = Path(folder)
    repo_id = cache_entry_hub_id(folder.name)
    if repo_id is None or not (folder / "snapshots").is_dir():
        return ""
    return f"; it is a Hugging Face cache entry: give its hub id {repo_id} (or a folder in its snapshots/)"


def model_card_body(config, training: dict | None) -> str:
    """The Markdown of the card below its metadata."""
    lines = [f"# l2s relation classifier ({_card_model(config, training)})", "",
             "A Learn-to-Steer (Yiflach, Atzmon, Chechik, WACV 2026) relation classifier for l2s: it reads "
             "the spatial relation of two objects from a text-to-image model's "
             "cross-attention maps, and its loss steers the latent during the first denoising steps.", "",
             "## Classes", "", ", ".join(f"`{name}`" for name in config.class_names), "",
             "## Map layout", "", *_layout_lines(config), "", "## Training", "", *_training_lines(training), "",
             "## Use", "", "```python", "from l2s.classifier import RelationClassifier", "",
             'classifier = RelationClassifier.from_pretrained("REPO_ID_OR_FOLDER")', "```", "",
             "or `l2s generate PROMPT --model PIPELINE --classifier FOLDER`."]
    return "\n".join(lines) + "\n"


def _card_model(config, training: dict | None) -> str:
    """What the card's title names: the model whose maps trained it where the record names one other
    than by a machine's folder (the shapes world's, a hub id), else the configuration's family (the
    shapes classifiers are sized from the schnell preset, but no FLUX.1-schnell read them)."""
    model, _ = recorded_base_model(training)
    return model if model and not Path(model).is_absolute() else config.model_family


def _epochs_run(training: dict) -> str:
    """`` of 40 run`` when the record was saved after its best epoch; the best checkpoint is saved at
    its own epoch, so there the run's epoch limit is what can be said."""
    best, epoch, limit = training["best_epoch"], training.get("epoch"), training.get("max_epochs")
    if isinstance(epoch, int) and isinstance(best, int) and epoch > best:
        return f" of {epoch} run"
    return f" of a run of at most {limit} epochs" if isinstance(limit, int) else ""


def _layout_lines(config) -> list[str]:
    lines = [f"- {config.channels} maps per object, each resized to {config.map_size}x{config.map_size}"
             + (f" (from the model's {config.orig_map_size}x{config.orig_map_size} attention grid)"
                if config.orig_map_size else ""),
             f"- trained step indices {list(config.timesteps)} of {config.num_timesteps} sampling steps"]
    if config.layer_layout:
        lines.append("- layers (name, heads, grid): " + "; ".join(
            f"`{entry[0]}` {len(entry[1]) if isinstance(entry[1], list) else entry[1]}"
            + (f" {entry[2][0]}x{entry[2][1]}" if len(entry) > 2 and isinstance(entry[2], list) else "")
            for entry in config.layer_layout))
    else:
        lines.append("- layers: every attention layer of the model, all heads, in the model's order")
    return lines


def _training_lines(training: dict | None) -> list[str]:
    if not training:
        return ["Not recorded with these weights."]
    lines = []
    if training.get("source"):
        lines.append(f"- source: {training['source']}")
    model, family = recorded_base_model(training)
    if model or family:    # a machine's folder by its name alone, as the dataset's
        shown = model and f"`{Path(model).name if Path(model).is_absolute() else model}`"
        lines.append(f"- trained on maps of {base_model_text(shown, family, with_family=True)}")
    if training.get("dataset"):
        lines.append(f"- data: attention maps of dual inversions, dataset `{Path(str(training['dataset'])).name}`"
                     + (f" ({training['train_samples']} training, {training['val_samples']} validation records)"
                        if "train_samples" in training and "val_samples" in training else ""))
    if training.get("best_epoch") is not None:
        loss = training.get("best_val_loss")   # what "best" means: the lowest validation loss, not accuracy
        lines.append(f"- best epoch {training['best_epoch']}{_epochs_run(training)}"
                     + (f" (the lowest validation loss: {loss:.4f})" if isinstance(loss, (int, float)) else ""))
    accuracy = training.get("best_val_accuracy")
    lines.append(f"- validation accuracy: {accuracy:.3f}" if isinstance(accuracy, (int, float))
                 else "- validation accuracy: not recorded")
    return lines
