"""l2s.training: the relation classifier's training data (labelled relations, dual inversions,
sharded map datasets) and its training, with the relation-leakage measures."""

from .dataset import (DatasetSummary, check_dataset_images, check_make_data_options, dataset_summary, make_dataset,
                      recorded_pair_samples)
from .flux_inversion import flux_sigmas, rf_inversion_mix
from .gqa import GQA_ATTRIBUTES, gqa_samples, wordnet_is_a
from .inversion import DualRecord, TrainingPrompt, dual_invert, invert_and_capture, training_prompts
from .inversion_utils import (
    DEFAULT_STEPS,
    DEFAULT_STORE_STEPS,
    InversionResult,
    default_image_size,
    map_grid,
    psnr,
)
from l2s.pipelines.families import pipeline_family
from .leakage import (
    compare_classifiers,
    compare_hits,
    leakage_by_step,
    leakage_from_hits,
    leakage_gap,
    leakage_line,
    record_hits,
    relation_leakage,
    validation_report,
)
from .layers import dataset_channels, first_blocks_of_dataset, with_first_blocks
from .map_dataset import resize_map_dataset, write_map_dataset
from .reader import AttentionMapDataset
from .sources import (
    RelationSample,
    balance_samples,
    coco_samples,
    diagonal_relation,
    prompt_pair_samples,
    sample_seed,
    split_of,
)
from .store import MAP_DTYPES, load_dataset_meta, shard_size_to_resume, verify_dataset
from .epochs import TrainingDivergedError
from .writer import remove_empty_dataset
from .train import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    TrainResult,
    check_training_options,
    train_classifier,
)

__all__ = [
    "AttentionMapDataset",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "DEFAULT_STORE_STEPS",
    "DatasetSummary",
    "DualRecord",
    "GQA_ATTRIBUTES",
    "InversionResult",
    "MAP_DTYPES",
    "RelationSample",
    "TrainResult",
    "TrainingPrompt",
    "TrainingDivergedError",
    "balance_samples",
    "check_dataset_images",
    "check_make_data_options",
    "check_training_options",
    "coco_samples",
    "compare_classifiers",
    "compare_hits",
    "dataset_channels",
    "dataset_summary",
    "default_image_size",
    "diagonal_relation",
    "dual_invert",
    "first_blocks_of_dataset",
    "flux_sigmas",
    "gqa_samples",
    "invert_and_capture",
    "leakage_by_step",
    "leakage_from_hits",
    "leakage_gap",
    "leakage_line",
    "load_dataset_meta",
    "make_dataset",
    "map_grid",
    "pipeline_family",
    "prompt_pair_samples",
    "psnr",
    "record_hits",
    "recorded_pair_samples",
    "relation_leakage",
    "remove_empty_dataset",
    "resize_map_dataset",
    "rf_inversion_mix",
    "sample_seed",
    "shard_size_to_resume",
    "split_of",
    "train_classifier",
    "training_prompts",
    "validation_report",
    "verify_dataset",
    "with_first_blocks",
    "wordnet_is_a",
    "write_map_dataset",
]
