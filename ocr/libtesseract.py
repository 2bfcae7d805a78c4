"""One page read through libtesseract's C API: the program the engine runs instead of the
`tesseract` command when no format needs tesseract's own document renderers (hOCR, ALTO, PDF).

    python -I -S libtesseract.py IMAGE OUTBASE LANG DPI MEMORY_MB [adaptive] [tsv]

writes OUTBASE.txt (tesseract's text output, joined from the words), OUTBASE.words (one line
per word: left, top, right, bottom, confidence and text, tab-separated, as tesseract's TSV has
them) and, with `tsv`, OUTBASE.tsv (tesseract's TSV file). Exit status 0, or 1 with the reason on stderr.

Why: the `tesseract` command reads the page as this program does (leptonica, page segmentation
"auto", `user_defined_dpi`) and gives the same text, but a page's words and confidences only
come out of it as a TSV, which it builds symbol by symbol. Here they are read word by word from
the result iterator: 4-7% less CPU per page than `tesseract ... tsv` (dense 300 dpi pages,
benchmarks/throughput.py's, 6 pages twice: 2118 against 2210 ms on one machine, 2025 against
2183 on another), and from as much as its text alone to 4% less. Like tesseract, it runs as a
process of its own that a cancel kills mid-page.

Standard library only, nothing of Django or of the `ocr` package (run with -I -S: no site
packages to import, ~15 ms to start).
"""

import ctypes
import os
import resource
import sys

RIL_PARA, RIL_TEXTLINE, RIL_WORD = 1, 2, 3
PSM_AUTO = 3  # tesseract's command line default (the API's own is a single block)
VOID = ctypes.c_void_p
INT = ctypes.c_int


def bind(library: ctypes.CDLL, name: str, restype, *argtypes):
    function = getattr(library, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


def read(image: str, outbase: str, lang: str, dpi: int, adaptive: bool, tsv: bool) -> None:
    tess = ctypes.CDLL("libtesseract.so.5")
    lept = ctypes.CDLL("liblept.so.5")
    pix_read = bind(lept, "pixRead", VOID, ctypes.c_char_p)
    api_create = bind(tess, "TessBaseAPICreate", VOID)
    api_init = bind(tess, "TessBaseAPIInit3", INT, VOID, ctypes.c_char_p, ctypes.c_char_p)
    set_variable = bind(tess, "TessBaseAPISetVariable", INT, VOID, ctypes.c_char_p, ctypes.c_char_p)
    set_psm = bind(tess, "TessBaseAPISetPageSegMode", None, VOID, INT)
    set_image = bind(tess, "TessBaseAPISetImage2", None, VOID, VOID)
    recognize = bind(tess, "TessBaseAPIRecognize", INT, VOID, VOID)
    tsv_text = bind(tess, "TessBaseAPIGetTsvText", VOID, VOID, INT)
    delete_text = bind(tess, "TessDeleteText", None, VOID)
    iterator = bind(tess, "TessBaseAPIGetIterator", VOID, VOID)
    as_page_iterator = bind(tess, "TessResultIteratorGetPageIteratorConst", VOID, VOID)
    word_text = bind(tess, "TessResultIteratorGetUTF8Text", VOID, VOID, INT)
    confidence = bind(tess, "TessResultIteratorConfidence", ctypes.c_float, VOID, INT)
    box = bind(tess, "TessPageIteratorBoundingBox", INT, VOID, INT, *[ctypes.POINTER(INT)] * 4)
    at_start_of = bind(tess, "TessPageIteratorIsAtBeginningOf", INT, VOID, INT)
    next_word = bind(tess, "TessResultIteratorNext", INT, VOID, INT)

    def text_of(pointer) -> bytes:
        try:
            return ctypes.string_at(pointer) if pointer else b""
        finally:
            if pointer:
                delete_text(pointer)

    api = api_create()
    if api_init(api, None, lang.encode()) != 0:
        raise RuntimeError(f"could not load the language(s) {lang!r}")
    set_psm(api, PSM_AUTO)
    set_variable(api, b"user_defined_dpi", str(dpi).encode())
    if adaptive:
        set_variable(api, b"thresholding_method", b"2")  # Sauvola, as engine.SAUVOLA
    pix = pix_read(image.encode())
    if not pix:
        raise RuntimeError(f"could not read the page image {image}")
    set_image(api, pix)
    if recognize(api, None) != 0:
        raise RuntimeError("recognition failed")
    if tsv:  # as tesseract's TSV renderer writes it: a header, then the page (number 1)
        with open(f"{outbase}.tsv", "wb") as handle:
            handle.write(
                b"level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
            )
            handle.write(text_of(tsv_text(api, 0)))
    # The text is joined from the words as tesseract's text output joins them (and as
    # ocr.tesseract_text.text_from_tsv does): a line's words by one space, a newline after each
    # line, a blank line between paragraphs. TessBaseAPIGetUTF8Text would walk the page again
    # for the same text: 40 ms of a 2.1 s page.
    rows, lines, line = [], [], []
    words = iterator(api)
    if words:
        page = as_page_iterator(words)
        left, top, right, bottom = INT(), INT(), INT(), INT()
        while True:
            text = text_of(word_text(words, RIL_WORD))
            if box(page, RIL_WORD, left, top, right, bottom):  # a word that is not empty
                # the confidence printed as tesseract's TSV prints it (std::to_string of a float)
                rows.append(b"%d\t%d\t%d\t%d\t%s\t%s" % (
                    left.value, top.value, right.value, bottom.value,
                    f"{confidence(words, RIL_WORD):f}".encode(),
                    text.replace(b"\t", b" ").replace(b"\n", b" "),
                ))  # fmt: skip
                if at_start_of(page, RIL_TEXTLINE):
                    if line:
                        lines.append(b" ".join(line))
                        line = []
                    if lines and at_start_of(page, RIL_PARA):
                        lines.append(b"")
                line.append(text)
            if not next_word(words, RIL_WORD):
                break
    if line:
        lines.append(b" ".join(line))
    with open(f"{outbase}.txt", "wb") as handle:
        handle.write(b"\n".join(lines))
    with open(f"{outbase}.words", "wb") as handle:
        handle.write(b"\n".join(rows))


def main(argv: list[str]) -> int:
    image, outbase, lang, dpi, memory_mb, *flags = argv
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # read when libtesseract loads: one thread per page
    if int(memory_mb):  # before libtesseract loads: a page can never take more
        limit = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        read(image, outbase, lang, int(dpi), "adaptive" in flags, "tsv" in flags)
    except (OSError, MemoryError, RuntimeError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    # without tesseract's and Python's clean-up at exit: the files are written and closed
    os._exit(main(sys.argv[1:]))
