"""Prompt templates of every task (SPEC §2).

* The seed's Table 12 (detailed localized tasks) verbatim: :data:`DLC_QUESTIONS` (30),
  :data:`DLRES_QUESTIONS_TABLE12` (2), :data:`DLRES_ANSWERS` (5).
* The anchors: LISA's ``SHORT_QUESTION_LIST`` / ``LONG_QUESTION_LIST`` / ``ANSWER_LIST``
  (``utils/utils.py`` of dvlab-research/LISA) and GLaMM's ``GCG_QUESTIONS``
  (``dataset/utils/utils.py`` of mbzuai-oryx/groundingLMM), without their ``<image>\\n`` prefix: the
  processor adds the image, task text never carries an image placeholder.
* Ours where the paper is silent (marked below): MUSE answers, ROC paraphrases, region-in/mask-out.

Training samples one template at random; evaluation uses the single fixed template of
:data:`EVAL_TEMPLATES` so runs are comparable. Placeholders: ``{expr}`` (referring expression),
``{question}``, ``{caption}``, ``{segs}`` (``[SEG]`` list), ``{attr}``; ``<region>`` marks a visual
prompt slot and ``[SEG]`` a segmentation token.
"""
from __future__ import annotations

import re

REGION = "<region>"
SEG = "[SEG]"

# ---------------------------------------------------------------- seed Table 12, verbatim
DLC_QUESTIONS: tuple[str, ...] = (
    "Can you provide me with a detailed description of the region in the picture marked by <region>?",
    "I'm curious about the region represented by <region> in the picture. Could you describe it in detail?",
    "What can you tell me about the region indicated by <region> in the image?",
    "I'd like to know more about the area in the photo labeled <region>. Can you give me a detailed description?",
    "Could you describe the region shown as <region> in the picture in great detail?",
    "What details can you give me about the region outlined by <region> in the photo?",
    "Please provide me with a comprehensive description of the region marked with <region> in the image.",
    "Can you give me a detailed account of the region labeled as <region> in the picture?",
    "I'm interested in learning more about the region represented by <region> in the photo. Can you describe it in detail?",
    "What is the region outlined by <region> in the picture like? Could you give me a detailed description?",
    "Can you provide me with a detailed description of the region in the picture marked by <region>, please?",
    "I'm curious about the region represented by <region> in the picture. Could you describe it in detail, please?",
    "What can you tell me about the region indicated by <region> in the image, exactly?",
    "I'd like to know more about the area in the photo labeled <region>, please. Can you give me a detailed description?",
    "Could you describe the region shown as <region> in the picture in great detail, please?",
    "What details can you give me about the region outlined by <region> in the photo, please?",
    "Please provide me with a comprehensive description of the region marked with <region> in the image.",
    "Can you give me a detailed account of the region labeled as <region> in the picture?",
    "I'm interested in learning more about the region represented by <region> in the photo. Can you describe it in detail, please?",
    "What is the region outlined by <region> in the picture like, please? Could you give me a detailed description?",
    "Please describe the region <region> in the image in detail.",
    "Can you offer a thorough analysis of the region <region> in the image?",
    "Could you elaborate on the region highlighted by <region> in the picture provided?",
    "Please share more information about the zone emphasized with <region> in the photo.",
    "What insights can you give about the area denoted by <region> in the image presented?",
    "Can you share a comprehensive rundown of the region denoted by <region> in the presented image?",
    "I'd like to know more about the region highlighted by <region> in the picture provided.",
    "Work through the important details of the area <region> in the image.",
    "Illustrate the area represented by <region> through a descriptive explanation.",
    "Examine the region <region> closely and share its details.",
)
#: Table 12 "Answer Prompt" of DLC: the answer is the detailed localized caption itself
DLC_ANSWER = "{caption}"
DLRES_QUESTIONS_TABLE12: tuple[str, ...] = (
    "<images>\n<Detailed Localized Caption>. Please respond with segmentation mask.",
    "<images>\n<Detailed Localized Caption>. Please output segmentation mask.",
)
DLRES_ANSWERS: tuple[str, ...] = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)
#: Table 12's DL-RES questions as templates: image placeholder dropped (the processor adds the
#: image), the caption slot as ``{caption}`` (inserted without its final full stop).
DLRES_QUESTIONS: tuple[str, ...] = tuple(
    q.replace("<images>\n", "").replace("<Detailed Localized Caption>", "{caption}") for q in DLRES_QUESTIONS_TABLE12
)

# ---------------------------------------------------------------- anchors (LISA, GLaMM)
#: LISA ``SHORT_QUESTION_LIST`` (``{class_name}`` → ``{expr}``)
LISA_SHORT_QUESTION_LIST: tuple[str, ...] = (
    "Can you segment the {expr} in this image?",
    "Please segment the {expr} in this image.",
    "What is {expr} in this image? Please respond with segmentation mask.",
    "What is {expr} in this image? Please output segmentation mask.",
)
#: LISA ``LONG_QUESTION_LIST`` (``{sent}`` → ``{question}``)
LISA_LONG_QUESTION_LIST: tuple[str, ...] = (
    "{question} Please respond with segmentation mask.",
    "{question} Please output segmentation mask.",
)
LISA_EXPLANATORY_QUESTION_LIST: tuple[str, ...] = (
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
)
#: LISA ``ANSWER_LIST`` (identical to Table 12's DL-RES answers)
ANSWER_LIST: tuple[str, ...] = DLRES_ANSWERS
#: GLaMM ``GCG_QUESTIONS``
GCG_QUESTIONS: tuple[str, ...] = (
    "Could you please give me a detailed description of the image? Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Can you provide a thorough description of the this image? Please output with interleaved segmentation masks for the corresponding phrases.",
    "Please describe in detail the contents of the image. Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Could you give a comprehensive explanation of what can be found within this picture? Please output with interleaved segmentation masks for the corresponding phrases.",
    "Could you give me an elaborate explanation of this picture? Please respond with interleaved segmentation masks for the corresponding phrases.",
    "Could you provide me with a detailed analysis of this photo? Please output with interleaved segmentation masks for the corresponding parts of the answer.",
)

# ---------------------------------------------------------------- per-task training templates
#: RES: SPEC §2's template first, then LISA's short questions, then the seed's Figure 8 form
RES_QUESTIONS: tuple[str, ...] = (
    "What is {expr} in this image? Please output segmentation mask.",
    *LISA_SHORT_QUESTION_LIST,
    "Please segment {expr}.",
)
RES_ANSWERS: tuple[str, ...] = ANSWER_LIST
REASONSEG_QUESTIONS: tuple[str, ...] = LISA_LONG_QUESTION_LIST
REASONSEG_ANSWERS: tuple[str, ...] = ANSWER_LIST
#: MUSE questions (seed Figure 8: "... Please respond with segmentation mask.")
MUSE_QUESTIONS: tuple[str, ...] = LISA_LONG_QUESTION_LIST
#: ours: template answers when a multi-target question has no text answer; ``{segs}`` = "[SEG], [SEG] and [SEG]"
MUSE_ANSWERS: tuple[str, ...] = (
    "Sure, {segs}.",
    "Sure, they are {segs}.",
    "The segmentation results are {segs}.",
    "{segs}.",
)
#: ROC: SPEC §2 (Osprey) first; the rest ours (the seed Figure 7 form among them)
ROC_QUESTIONS: tuple[str, ...] = (
    "What is the category of <region>? Using only one word or phrase.",
    "Please identify the label of the marked <region> in the image. Answer with one word or phrase.",
    "What kind of object is <region>? Answer with one word or phrase.",
    "Name the object in <region> with a single word or phrase.",
)
DLC_EVAL_QUESTION = DLC_QUESTIONS[0]
#: ROC over several regions at once (the seed's Figure 7 form; ours otherwise): ``{regions}`` is
#: "<region>, <region> and <region>", the answer the labels in the same order, comma-separated
ROC_MULTI_QUESTIONS: tuple[str, ...] = (
    "Please identify the labels of each marked {regions} in the image. Answer with one word or phrase each.",
    "What are the categories of {regions}? Answer with one word or phrase each, in order.",
)
#: short region captions (Visual Genome-style; Osprey's brief-description form; ours)
REGION_CAPTION_QUESTIONS: tuple[str, ...] = (
    "Please give me a short description of <region>.",
    "Can you give a brief description of the region <region>?",
    "Describe <region> in a few words.",
    "What is in the region <region>? Answer briefly.",
)
#: region in, mask out (ours; seed §S3.3 names the task). ``{attr}``: colour, shape, size, pattern
REGION_SEG_IDENTITY: tuple[str, ...] = (
    "Please segment <region>.",
    "Please output the segmentation mask of <region>.",
)
REGION_SEG_SAME_ONE: tuple[str, ...] = (
    "Please segment the object that has the same {attr} as <region>.",
    "Which object has the same {attr} as <region>? Please output segmentation mask.",
)
REGION_SEG_SAME_MANY: tuple[str, ...] = (
    "Please segment all the objects that have the same {attr} as <region>.",
    "Which objects have the same {attr} as <region>? Please output segmentation masks.",
)
REGION_SEG_NEAREST: tuple[str, ...] = (
    "Please segment the object closest to <region>.",
    "Which object is nearest to <region>? Please output segmentation mask.",
)

#: the single fixed (question, answer) template per task used at evaluation (teacher-forced answer)
EVAL_TEMPLATES: dict[str, tuple[str, str]] = {
    "res": ("What is {expr} in this image? Please output segmentation mask.", "Sure, [SEG]."),
    "reasonseg": ("{question} Please output segmentation mask.", "Sure, [SEG]."),
    "muse": ("{question} Please respond with segmentation mask.", "Sure, {segs}."),
    "dlres": ("{caption}. Please output segmentation mask.", "Sure, [SEG]."),
    "roc": ("What is the category of <region>? Using only one word or phrase.", "{label}"),
    "dlc": (DLC_EVAL_QUESTION, "{caption}"),
    "region_caption": (REGION_CAPTION_QUESTIONS[0], "{expr}"),
    "gcg": (GCG_QUESTIONS[0], "{caption}"),
    "region_seg": ("Please segment the object that has the same {attr} as <region>.", "Sure, {segs}."),
}


def seg_list(n: int) -> str:
    """``"[SEG]"``, ``"[SEG] and [SEG]"``, ``"[SEG], [SEG] and [SEG]"``, ..."""
    if n <= 0:
        raise ValueError("need at least one [SEG]")
    if n == 1:
        return SEG
    return ", ".join([SEG] * (n - 1)) + " and " + SEG


_DOUBLE_ARTICLE = re.compile(r"\b(the|a|an) (the|a|an) ", re.IGNORECASE)


def fill(template: str, **kw) -> str:
    """``template.format(**kw)`` with article clashes removed ("segment the the red circle")."""
    out = template.format(**kw)
    return _DOUBLE_ARTICLE.sub(lambda m: m.group(1) + " ", out)


def strip_period(text: str) -> str:
    """Caption without trailing spaces and full stops (Table 12 appends its own '. Please ...')."""
    return text.strip().rstrip(".").rstrip()
