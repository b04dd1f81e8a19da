"""Ingest a VQA questions + annotations pair (OK-VQA, VQAv2) into the workspace's dataset/."""

from __future__ import annotations

from pathlib import Path

from curate.dataset_store import write_dataset_batches
from datasets_spec.vqa import VqaReader
from datasets_spec.workspace import Workspace


def ingest_vqa(
    ws: Workspace,
    questions: Path,
    annotations: Path,
    *,
    image_root: Path | None = None,
    split: str = "train",
    skip_bad_images: bool = False,
    overwrite: bool = False,
    image_pattern: str | None = None,
    decode_images: bool = False,
    follow_symlinks: bool = False,
) -> dict:
    """Write one conversation per question as the workspace dataset; return dataset.json's payload.

    ``image_pattern`` (e.g. ``COCO_val2014_{image_id:012d}.jpg``) overrides the COCO name derived from
    the questions file's ``data_subtype``; ``decode_images`` fully decodes every image (default: exists).
    """
    questions, annotations = Path(questions), Path(annotations)
    reader = VqaReader(
        questions,
        annotations,
        image_root=image_root,
        split=split,
        skip_bad_images=skip_bad_images,
        decode_images=decode_images,
        follow_symlinks=follow_symlinks,
        image_pattern=image_pattern,
    )

    def finish(directory: Path) -> dict:
        return {
            "skipped_images": reader.skipped_images,
            "follow_symlinks": follow_symlinks,
            "annotations_without_question": reader.unanswered_annotations,
            "image_pattern": image_pattern,
        }

    return write_dataset_batches(
        ws,
        reader.batches(),
        source="vqa",
        source_paths={"questions": str(questions.resolve()), "annotations": str(annotations.resolve())},
        image_root=image_root,
        where=str(questions),
        overwrite=overwrite,
        finish=finish,
    )
