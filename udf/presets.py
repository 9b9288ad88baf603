"""Task presets: a bare task name as the instruction expands to a written-out instruction.

``llm('summarize', review)`` is the same as writing the instruction below in full. A preset is
recognised when the whole instruction, trimmed and lower-cased, is one of the names; any
other text is used as written. The expansion depends on the function, because each one asks
a different kind of question:

| preset | ``llm`` (text) | ``llm_filter`` (yes/no) | ``llm_score`` (1..5) | ``llm_classify`` |
|---|---|---|---|---|
| ``classify`` | Classify the input into a short category. Answer with the category name only. | Does the input belong to the category it describes? | How clearly does the input fit one category? | Classify the input into exactly one of the labels. |
| ``sentiment`` | Classify the sentiment of the input as positive, negative or neutral. Answer with one word. | Is the sentiment of the input positive? | Rate the sentiment of the input from 1 (very negative) to 5 (very positive). | Classify the sentiment of the input into exactly one of the labels. |
| ``summarize`` | Summarize the input in one short sentence. | Can the input be summarized as a single clear point? | How informative is the input, from 1 (not at all) to 5 (very)? | Pick the label that best summarizes the input. |
| ``extract`` | Extract the single most important fact from the input. Answer with the fact only. | Does the input contain a concrete, extractable fact? | How many concrete facts does the input contain, from 1 (none) to 5 (many)? | Pick the label that the input mentions or implies. |

``llm_extract`` expands each preset to "Extract ... the facts the schema asks for" (see ``PRESETS``).
``llm_classify(field, labels)`` has no instruction argument; it always uses its ``classify``
preset, followed by the list of labels (see ``udf.prompts``).
"""
from __future__ import annotations

PRESET_NAMES = ("classify", "sentiment", "summarize", "extract")

PRESETS: dict[str, dict[str, str]] = {
    "classify": {
        "llm": "Classify the input into a short category. Answer with the category name only.",
        "llm_filter": "Does the input belong to the category it describes?",
        "llm_score": "How clearly does the input fit one category?",
        "llm_classify": "Classify the input into exactly one of the labels.",
        "llm_extract": "Extract the input's category and the facts the schema asks for.",
    },
    "sentiment": {
        "llm": "Classify the sentiment of the input as positive, negative or neutral. Answer with one word.",
        "llm_filter": "Is the sentiment of the input positive?",
        "llm_score": "Rate the sentiment of the input from 1 (very negative) to 5 (very positive).",
        "llm_classify": "Classify the sentiment of the input into exactly one of the labels.",
        "llm_extract": "Extract the sentiment of the input and the facts the schema asks for.",
    },
    "summarize": {
        "llm": "Summarize the input in one short sentence.",
        "llm_filter": "Can the input be summarized as a single clear point?",
        "llm_score": "How informative is the input, from 1 (not at all) to 5 (very)?",
        "llm_classify": "Pick the label that best summarizes the input.",
        "llm_extract": "Extract a short summary of the input into the fields the schema asks for.",
    },
    "extract": {
        "llm": "Extract the single most important fact from the input. Answer with the fact only.",
        "llm_filter": "Does the input contain a concrete, extractable fact?",
        "llm_score": "How many concrete facts does the input contain, from 1 (none) to 5 (many)?",
        "llm_classify": "Pick the label that the input mentions or implies.",
        "llm_extract": "Extract the facts the schema asks for from the input.",
    },
}


def expand(function: str, instruction: str | None) -> str:
    """The instruction text for ``function``: a preset's expansion, or ``instruction`` as written."""
    if instruction is None:
        if function == "llm_classify":
            return PRESETS["classify"]["llm_classify"]
        raise ValueError(f"{function} needs an instruction (text, or one of the presets {', '.join(PRESET_NAMES)})")
    key = instruction.strip().lower()
    if key in PRESETS:
        return PRESETS[key][function]
    return instruction
