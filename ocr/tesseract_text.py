"""What tesseract wrote, read back: the word rows of its TSV, its text rebuilt from them, and
the words as pages keep them (from the TSV, or from ocr/libtesseract.py's words file).

No Django, no processes: bytes in, text and words out.
"""

from __future__ import annotations

from collections.abc import Iterator

# Languages (and script models) written right to left. tesseract's text output marks the
# direction changes in their lines (U+200E/U+200F) and its TSV does not, so their text cannot
# be rebuilt from the TSV (see text_from_tsv).
RIGHT_TO_LEFT = frozenset("ara ckb div fas heb kur nqo ota pus snd syr uig urd yid Arabic Hebrew Syriac Thaana".split())


def tsv_words(tsv: bytes) -> Iterator[list[str]]:
    """The word rows (level 5) of tesseract's TSV, each its 12 fields: level, page_num,
    block_num, par_num, line_num, word_num, left, top, width, height, conf, text."""
    for row in tsv.decode(errors="replace").split("\n")[1:]:
        fields = row.split("\t")
        if len(fields) >= 12 and fields[0] == "5":
            yield fields


def text_from_tsv(tsv: bytes) -> str:
    """tesseract's text output rebuilt from its TSV, as its text renderer joins a left-to-right
    page: a line's words joined by one space, a newline after each line and after each paragraph.

    Asking tesseract for the TSV alone instead of the text and the TSV (whose words and
    confidences every page read by the command needs) saves 2% of its time per page: txt 2316,
    tsv 2439, txt+tsv 2487 ms of CPU for a dense 300 dpi page (benchmarks/throughput.py's pages, medians of 8).
    Identical text on 16 pages of varied layouts (columns, tables, sizes, indents) at 150 and
    300 dpi; not for right-to-left languages (RIGHT_TO_LEFT)."""
    lines: list[str] = []
    words: list[str] = []
    line = paragraph = None
    for fields in tsv_words(tsv):
        if fields[:5] != line:  # level, page, block, paragraph, line
            if words:
                lines.append(" ".join(words))
                words = []
            if paragraph is not None and fields[1:4] != paragraph:
                lines.append("")
            line, paragraph = fields[:5], fields[1:4]
        words.append(fields[11])
    if words:
        lines.append(" ".join(words))
    return "\n".join(lines)


def word(
    left: int | str, top: int | str, right: int | str, bottom: int | str, confidence: str, text: str
) -> dict | None:
    """One recognised word as pages keep it (text, confidence, bbox [x0, y0, x1, y1]), or None
    for a blank one or one without a confidence."""
    text = text.strip()
    if not text:
        return None
    try:
        bbox = [int(left), int(top), int(right), int(bottom)]
        value = float(confidence)
    except ValueError:
        return None
    return {"text": text, "confidence": round(value, 2), "bbox": bbox} if value >= 0 else None


def words_from_tsv(tsv: bytes) -> list[dict]:
    """The words of tesseract's TSV (whose boxes are left, top, width, height)."""
    found = []
    for fields in tsv_words(tsv):
        try:
            left, top, width, height = (int(value) for value in fields[6:10])
        except ValueError:
            continue
        found.append(word(left, top, left + width, top + height, fields[10], fields[11]))
    return [entry for entry in found if entry]


def words_from_rows(rows: bytes) -> list[dict]:
    """The words file of PAGE_PROGRAM: left, top, right, bottom, confidence, text per line."""
    found = (word(*row.split("\t", 5)) for row in rows.decode(errors="replace").split("\n") if row.count("\t") >= 5)
    return [entry for entry in found if entry]


def left_to_right(lang: str) -> bool:
    return not any(name.removeprefix("script/") in RIGHT_TO_LEFT for name in lang.split("+"))
