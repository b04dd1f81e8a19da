"""The source task of a LLaVA-1.5 mix sample, derived from what the record itself shows.

llava_v1_5_mix665k.json carries no source field: each record has an ``id``, an optional ``image`` path and
its ``conversations``. Two things in the record identify where it came from:

* the image folder (the path's first component): ``coco``, ``gqa``, ``ocr_vqa``, ``textvqa``, ``vg``,
  or no image at all;
* the instruction form of the first human turn: the fixed prompts LLaVA-1.5 appended per source
  (its paper's data table) and the detailed-description prompts of LLaVA-Instruct.

Rules, first match wins (``first human`` is the first human turn with ``<image>`` removed):

=====================  ================================================================================
task                   the record shows
=====================  ================================================================================
text_only              no image (in the 665K mix: the ShareGPT conversations)
gqa                    an image under gqa/ (only GQA uses those images in the mix)
ocr_vqa                an image under ocr_vqa/
textcaps               an image under textvqa/ and the one-sentence caption prompt
vg_region              an image under vg/ and a region prompt (box -> description or description -> box)
refcoco                an image under coco/ and a region prompt
aokvqa                 an image under coco/ and the option-letter prompt (A-OKVQA multiple choice)
vqav2_okvqa            an image under coco/ and the single-word-or-phrase prompt: VQAv2 or OK-VQA, which
                       share images and prompt, so the record cannot tell them apart
llava_detail           an image under coco/, one exchange, and a LLaVA-Instruct detailed-description prompt
llava_conversation     an image under coco/, no fixed prompt, more than one exchange
llava_reasoning        an image under coco/, no fixed prompt, one exchange
unknown                anything else: another folder, or a prompt that does not belong to its folder
=====================  ================================================================================

``llava_conversation`` / ``llava_reasoning`` are the one split decided by a shape rather than a prompt:
LLaVA-Instruct's conversation samples are multi-turn and its complex-reasoning samples single-turn; a
single-turn conversation sample, if the file has one, is counted as reasoning.

Known figures for the real 665K mix (665,298 records; LLaVA's own recount of its data table and a per-folder
count, haotian-liu/LLaVA issues #702 and #657): coco 364,100 = LLaVA-Instruct 157,712 + VQAv2 82,783 +
OK-VQA 8,998 + A-OKVQA 66,160 + RefCOCO 48,447; vg 86,417; gqa 72,140; ocr_vqa 80,000; textvqa (TextCaps)
21,953; text-only (ShareGPT) 40,688. What the rules give there is in docs/llava-665k.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datasets_spec.schema import IMAGE_TOKEN

# Bumped whenever a rule changes, so a dataset.json says which rules labelled its rows.
TASK_RULES_VERSION = 1

TEXT_ONLY = "text_only"
UNKNOWN = "unknown"
TASKS = (
    TEXT_ONLY, "gqa", "ocr_vqa", "textcaps", "vg_region", "refcoco", "aokvqa", "vqav2_okvqa",
    "llava_detail", "llava_conversation", "llava_reasoning", UNKNOWN,
)

SHORT_ANSWER_PROMPT = "answer the question using a single word or phrase."
OPTION_LETTER_PROMPT = "answer with the option's letter from the given choices directly."
CAPTION_PROMPT = "provide a one-sentence caption for the provided image."
REGION_PROMPTS = (
    "please provide the bounding box coordinate of the region this sentence describes",
    "please provide a short description for this region",
)
# A normalised box as LLaVA-1.5 writes region prompts and answers: [x1, y1, x2, y2] with values in [0, 1].
_BOX = re.compile(r"\[\s*[01](?:\.\d+)?\s*(?:,\s*[01](?:\.\d+)?\s*){3}\]")
# The detailed-description instructions of LLaVA-Instruct (its paper's list), compared without case and
# trailing punctuation.
DETAIL_PROMPTS = frozenset(
    p.lower()
    for p in (
        "Describe the following image in detail",
        "Provide a detailed description of the given image",
        "Give an elaborate explanation of the image you see",
        "Share a comprehensive rundown of the presented image",
        "Offer a thorough analysis of the image",
        "Explain the various aspects of the image before you",
        "Clarify the contents of the displayed image with great detail",
        "Characterize the image using a well-detailed description",
        "Break down the elements of the image in a detailed manner",
        "Walk through the important details of the image",
        "Portray the image with a rich, descriptive narrative",
        "Narrate the contents of the image with precision",
        "Analyze the image in a comprehensive and detailed manner",
        "Illustrate the image through a descriptive explanation",
        "Examine the image closely and share its details",
        "Write an exhaustive depiction of the given image",
    )
)


def sample_task(image: str | None, conversations: Sequence[dict]) -> str:
    """The task (one of :data:`TASKS`) of one record; see the module docstring for the rules."""
    if image is None:
        return TEXT_ONLY
    folder = image.replace("\\", "/").split("/", 1)[0]
    if folder == "gqa":
        return "gqa"
    if folder == "ocr_vqa":
        return "ocr_vqa"
    humans = [turn["value"] for turn in conversations if turn["from"] == "human"]
    first = humans[0].replace(IMAGE_TOKEN, "").strip().lower() if humans else ""
    form = _instruction_form(first, conversations)
    if folder == "textvqa":
        return "textcaps" if form == "caption" else UNKNOWN
    if folder == "vg":
        return "vg_region" if form == "region" else UNKNOWN
    if folder != "coco":
        return UNKNOWN
    if form == "detail" and len(humans) > 1:
        form = None  # a description prompt opening a multi-turn conversation
    if form is not None:
        return _COCO_FORMS.get(form, UNKNOWN)
    return "llava_conversation" if len(humans) > 1 else "llava_reasoning"


_COCO_FORMS = {"region": "refcoco", "option": "aokvqa", "short": "vqav2_okvqa", "detail": "llava_detail"}


def _instruction_form(first: str, conversations: Sequence[dict]) -> str | None:
    """Which fixed instruction the (lower-cased) first human turn carries, if any."""
    if SHORT_ANSWER_PROMPT in first:
        return "short"
    if OPTION_LETTER_PROMPT in first:
        return "option"
    if CAPTION_PROMPT in first:
        return "caption"
    if any(p in first for p in REGION_PROMPTS) or _BOX.search(first):
        return "region"
    if first.rstrip(" .!?:") in DETAIL_PROMPTS:
        return "detail"
    return None


def sample_tasks(images: Sequence[str | None], conversations: Sequence[Sequence[dict]]) -> list[str]:
    """:func:`sample_task` of every record of a batch."""
    return [sample_task(image, convs) for image, convs in zip(images, conversations, strict=True)]
