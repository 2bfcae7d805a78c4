"""One page read through libtesseract's C API: the program the engine runs instead of the
`tesseract` command when no format needs tesseract's own document renderers (hOCR, ALTO, PDF).

    python -I -S libtesseract.py IMAGE OUTBASE LANG DPI MEMORY_MB [adaptive] [tsv]

writes OUTBASE.txt (tesseract's text output, joined from the words), OUTBASE.words (one line
per word: left, top, right, bottom, confidence and text, tab-separated, as tesseract's TSV has
them) and, with `tsv`, OUTBASE.tsv (tesseract's TSV file). Exit status 0, or 1 with the reason on stderr.

    python -I -S libtesseract.py IMAGE OUTBASE LANG 0 MEMORY_MB serve

loads the language once and reads IMAGE into OUTBASE.* for each line `DPI [adaptive] [tsv]`
on stdin, answering `ok` on stdout, until stdin closes: a page reader that stays
(ocr/page_readers.py). A page that fails ends it, as above.

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


class Reader:
    """libtesseract loaded and initialised for `lang`: reads any number of pages, one at a time."""

    def __init__(self, lang: str) -> None:
        tess = ctypes.CDLL("libtesseract.so.5")
        lept = ctypes.CDLL("liblept.so.5")
        self.pix_read = bind(lept, "pixRead", VOID, ctypes.c_char_p)
        self.pix_destroy = bind(lept, "pixDestroy", None, ctypes.POINTER(VOID))
        self.set_variable = bind(tess, "TessBaseAPISetVariable", INT, VOID, ctypes.c_char_p, ctypes.c_char_p)
        self.set_image = bind(tess, "TessBaseAPISetImage2", None, VOID, VOID)
        self.recognize = bind(tess, "TessBaseAPIRecognize", INT, VOID, VOID)
        self.clear = bind(tess, "TessBaseAPIClear", None, VOID)
        self.tsv_text = bind(tess, "TessBaseAPIGetTsvText", VOID, VOID, INT)
        self.delete_text = bind(tess, "TessDeleteText", None, VOID)
        self.iterator = bind(tess, "TessBaseAPIGetIterator", VOID, VOID)
        self.delete_iterator = bind(tess, "TessResultIteratorDelete", None, VOID)
        self.as_page_iterator = bind(tess, "TessResultIteratorGetPageIteratorConst", VOID, VOID)
        self.word_text = bind(tess, "TessResultIteratorGetUTF8Text", VOID, VOID, INT)
        self.confidence = bind(tess, "TessResultIteratorConfidence", ctypes.c_float, VOID, INT)
        self.box = bind(tess, "TessPageIteratorBoundingBox", INT, VOID, INT, *[ctypes.POINTER(INT)] * 4)
        self.at_start_of = bind(tess, "TessPageIteratorIsAtBeginningOf", INT, VOID, INT)
        self.next_word = bind(tess, "TessResultIteratorNext", INT, VOID, INT)
        self.api = bind(tess, "TessBaseAPICreate", VOID)()
        if bind(tess, "TessBaseAPIInit3", INT, VOID, ctypes.c_char_p, ctypes.c_char_p)(self.api, None, lang.encode()):
            raise RuntimeError(f"could not load the language(s) {lang!r}")
        bind(tess, "TessBaseAPISetPageSegMode", None, VOID, INT)(self.api, PSM_AUTO)

    def text_of(self, pointer) -> bytes:
        try:
            return ctypes.string_at(pointer) if pointer else b""
        finally:
            if pointer:
                self.delete_text(pointer)

    def read(self, image: str, outbase: str, dpi: int, adaptive: bool, tsv: bool) -> None:
        """One page: OUTBASE.txt, OUTBASE.words and, with `tsv`, OUTBASE.tsv (see the module's
        docstring). Every setting is made again for each page, so a page reads as in a process of
        its own (the LSTM recogniser keeps nothing from one page to the next)."""
        api = self.api
        self.set_variable(api, b"user_defined_dpi", str(dpi).encode())
        self.set_variable(api, b"thresholding_method", b"2" if adaptive else b"0")  # 2: Sauvola, as engine.SAUVOLA
        pix = VOID(self.pix_read(image.encode()))
        if not pix:
            raise RuntimeError(f"could not read the page image {image}")
        try:
            self.set_image(api, pix)
            if self.recognize(api, None) != 0:
                raise RuntimeError("recognition failed")
            self.write(outbase, tsv)
        finally:
            self.clear(api)
            self.pix_destroy(ctypes.byref(pix))

    def write(self, outbase: str, tsv: bool) -> None:
        api, text_of, box, at_start_of = self.api, self.text_of, self.box, self.at_start_of
        if tsv:  # as tesseract's TSV renderer writes it: a header, then the page (number 1)
            with open(f"{outbase}.tsv", "wb") as handle:
                handle.write(
                    b"level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
                )
                handle.write(text_of(self.tsv_text(api, 0)))
        # The text is joined from the words as tesseract's text output joins them (and as
        # ocr.tesseract_text.text_from_tsv does): a line's words by one space, a newline after each
        # line, a blank line between paragraphs. TessBaseAPIGetUTF8Text would walk the page again
        # for the same text: 40 ms of a 2.1 s page.
        rows, lines, line = [], [], []
        words = self.iterator(api)
        if words:
            page = self.as_page_iterator(words)
            left, top, right, bottom = INT(), INT(), INT(), INT()
            while True:
                text = text_of(self.word_text(words, RIL_WORD))
                if box(page, RIL_WORD, left, top, right, bottom):  # a word that is not empty
                    # the confidence printed as tesseract's TSV prints it (std::to_string of a float)
                    rows.append(b"%d\t%d\t%d\t%d\t%s\t%s" % (
                        left.value, top.value, right.value, bottom.value,
                        f"{self.confidence(words, RIL_WORD):f}".encode(),
                        text.replace(b"\t", b" ").replace(b"\n", b" "),
                    ))  # fmt: skip
                    if at_start_of(page, RIL_TEXTLINE):
                        if line:
                            lines.append(b" ".join(line))
                            line = []
                        if lines and at_start_of(page, RIL_PARA):
                            lines.append(b"")
                    line.append(text)
                if not self.next_word(words, RIL_WORD):
                    break
            self.delete_iterator(words)
        if line:
            lines.append(b" ".join(line))
        with open(f"{outbase}.txt", "wb") as handle:
            handle.write(b"\n".join(lines))
        with open(f"{outbase}.words", "wb") as handle:
            handle.write(b"\n".join(rows))


def serve(reader: Reader, image: str, outbase: str) -> None:
    """Read pages until stdin closes: a line `DPI [adaptive] [tsv]` asks for IMAGE read into
    OUTBASE.*, and `ok` on stdout says the files are written."""
    libc = ctypes.CDLL(None)
    for request in sys.stdin.buffer:
        dpi, *flags = request.split()
        reader.read(image, outbase, int(dpi), b"adaptive" in flags, b"tsv" in flags)
        libc.malloc_trim(0)  # an idle reader holds its model, not its last page's memory
        sys.stdout.buffer.write(b"ok\n")
        sys.stdout.buffer.flush()


def main(argv: list[str]) -> int:
    image, outbase, lang, dpi, memory_mb, *flags = argv
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # read when libtesseract loads: one thread per page
    if int(memory_mb):  # before libtesseract loads: a page can never take more
        limit = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        reader = Reader(lang)
        if "serve" in flags:
            serve(reader, image, outbase)
        else:
            reader.read(image, outbase, int(dpi), "adaptive" in flags, "tsv" in flags)
    except (OSError, MemoryError, RuntimeError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    # without tesseract's and Python's clean-up at exit: the files are written and closed
    os._exit(main(sys.argv[1:]))
