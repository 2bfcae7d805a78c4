"""LLM refinement of one page's OCR text, and the guard that decides whether the model's answer
may replace it.

The guard: an empty answer, a truncated one (`finish_reason` "length") or one that differs from
the OCR text by more than `max_change` (character edit distance over the OCR text's length,
whitespace folded; default 0.5) is not used: the page keeps its OCR text and says why in its
error message. difflib's SequenceMatcher was measured at 0.7 s for a 4,600-character page and
mis-aligns repetitive text; the bit-parallel edit distance below takes milliseconds.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import engine
from .llm import LLMConfig, LLMError, chat, resolve_model

logger = logging.getLogger(__name__)

SOURCE_LLM = "llm"
DEFAULT_PROMPT = (
    "You correct the output of OCR (optical character recognition). The user message is the text "
    "that OCR read from one page of a scanned document. Fix misread characters, broken or joined "
    "words and wrong spacing. Keep the wording, language, order and line breaks; do not add, remove, "
    "summarise, translate or comment on anything. Reply with the corrected text only."
)
VISION_NOTE = " The page image is attached: where the OCR text and the image disagree, follow the image."


@dataclass
class PageText:
    """A page's final text, where it came from, and (for LLM kinds) what the model did."""

    text: str
    source: str
    error: str | None = None
    extra: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # the page's requested formats (OCRPage.outputs)
    text_pdf: bytes | None = None


def image_data_url(image, max_side: int) -> str:
    """The page as a base64 PNG data URL, scaled down so that its longer side is at most `max_side`."""
    image = image.copy()
    image.thumbnail((max_side, max_side))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def build_messages(text: str, *, prompt: str, image_url: str | None) -> list[dict]:
    if image_url is None:
        return [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    return [{"role": "system", "content": prompt}, {"role": "user", "content": parts}]


def token_budget(config: LLMConfig, text: str) -> int:
    """max_tokens: the setting, or room for an answer as long as the OCR text even at one token per character."""
    if config.max_tokens > 0:
        return config.max_tokens
    return min(8192, len(text) + 256)


def refine_page(
    text: str,
    *,
    source: str,
    config: LLMConfig,
    scope: engine.CancelScope,
    prompt: str | None = None,
    model: str | None = None,
    image=None,
) -> PageText:
    """Ask the model to correct one page's text; fall back to `text` (and `source`) when the answer is unusable.

    Raises engine.Cancelled when the scope is cancelled meanwhile (nothing is to be recorded).
    """
    prompt_used = prompt or (DEFAULT_PROMPT + (VISION_NOTE if config.vision and image is not None else ""))
    model_name = resolve_model(config, model)
    extra: dict[str, Any] = {"model_used": model_name or None, "prompt_used": prompt_used, "llm_processing_time": 0.0}
    image_url = image_data_url(image, config.vision_max_side) if config.vision and image is not None else None
    if not text.strip() and image_url is None:
        return PageText(text=text, source=source, error="LLM not asked: OCR found no text on this page", extra=extra)
    started = time.perf_counter()
    try:
        completion = chat(
            config,
            messages=build_messages(text, prompt=prompt_used, image_url=image_url),
            model=model_name,
            max_tokens=token_budget(config, text),
            scope=scope,
        )
    except LLMError as exc:
        extra["llm_processing_time"] = round(time.perf_counter() - started, 4)
        return PageText(text=text, source=source, error=f"LLM refinement failed, OCR text kept: {exc}", extra=extra)
    extra["model_used"] = completion.model or model_name or None
    extra["llm_processing_time"] = round(completion.seconds, 4)
    answer = clean_answer(completion.text)
    reason, change = judge(text, answer, completion.finish_reason, max_change=config.max_change)
    if change is not None:
        extra["llm_change_rate"] = round(change, 4)
    if reason is not None:
        return PageText(text=text, source=source, error=f"LLM answer not used ({reason}); OCR text kept", extra=extra)
    return PageText(text=answer, source=SOURCE_LLM, extra=extra)


def clean_answer(answer: str) -> str:
    """Strip the answer, and a Markdown code fence around all of it."""
    answer = answer.strip()
    if answer.startswith("```") and answer.endswith("```") and len(answer) >= 6:
        inner = answer[3:-3]
        if "\n" in inner:
            first_line, rest = inner.split("\n", 1)
            if not first_line.strip() or first_line.strip().isalnum():  # a language tag such as ```text
                inner = rest
        answer = inner.strip()
    return answer


def judge(
    ocr_text: str, answer: str, finish_reason: str | None, *, max_change: float
) -> tuple[str | None, float | None]:
    """(why the answer is unusable or None, the change rate when measured)."""
    if finish_reason == "length":
        return "truncated: the model hit its max_tokens limit", None
    if not answer:
        return "empty answer", None
    reference = " ".join(ocr_text.split())
    if not reference:
        return None, None  # nothing to compare with (vision on a page OCR found empty)
    candidate = " ".join(answer.split())
    lower_bound = abs(len(candidate) - len(reference)) / len(reference)
    if max_change > 0 and lower_bound > max_change:
        return f"too different from the OCR text: length {len(candidate)} vs {len(reference)}", None
    change = levenshtein(reference, candidate) / len(reference)
    if max_change > 0 and change > max_change:
        return f"too different from the OCR text: {change:.0%} of characters changed, limit {max_change:.0%}", change
    return None, change


def levenshtein(a: str, b: str) -> int:
    """Edit distance, bit-parallel (Myers 1999 / Hyyrö 2001) on Python integers: O(len(a) * len(b) / 64)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    masks: dict[str, int] = {}
    for i, char in enumerate(b):
        masks[char] = masks.get(char, 0) | (1 << i)
    full = (1 << m) - 1
    top = 1 << (m - 1)
    plus, minus, score = full, 0, m
    for char in a:
        eq = masks.get(char, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        hp = minus | (~(xh | plus) & full)
        hm = plus & xh
        if hp & top:
            score += 1
        elif hm & top:
            score -= 1
        hp = ((hp << 1) | 1) & full
        hm = (hm << 1) & full
        plus = hm | (~(xv | hp) & full)
        minus = hp & xv
    return score
