"""The engine with real tesseract and pymupdf: accuracy, text layer, sniffing, killing."""

import io
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from ocr import engine, tesseract_text
from tests import factories, support
from tests.conftest import ROOT
from tests.support import tesseract_pids, wait_for


def ocr_pdf_page(data: bytes, index: int, dpi: int = 300) -> str:
    doc = engine.open_pdf(data)
    image = engine.preprocess(engine.render_page(doc, index, dpi), contrast_level=1.3, threshold=500)
    return engine.run_tesseract(image, lang="eng", dpi=dpi).text


def test_image_only_pdf_is_read_with_low_character_error_rate():
    data = factories.image_pdf(2, dpi=300)
    doc = engine.open_pdf(data)
    assert engine.page_text_layer(doc, 0) == ""  # really image-only
    for index in range(2):
        expected = "\n".join(factories.page_lines(index + 1))
        assert support.cer(expected, ocr_pdf_page(data, index)) < 0.02


def varied_layouts_pdf() -> bytes:
    """Two columns under a heading, a table, short lines of mixed sizes: pages whose blocks,
    paragraphs and lines tesseract groups in different ways."""
    import pymupdf

    words = "invoice total amount due 2026 Street Paris 42.50 e-mail: a@b.com (note) 3.14% x/y the fox".split()

    def text(count: int, seed: int) -> str:
        return " ".join(words[(seed * 7 + i * 5) % len(words)] for i in range(count))

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(50, 50, 290, 800), "\n\n".join(text(40, n) for n in range(4)), fontsize=9)
    page.insert_textbox(pymupdf.Rect(310, 50, 560, 800), "HEADING\n" + "\n\n".join(text(25, n) for n in range(5)))
    page = doc.new_page()
    for row in range(25):
        for column in range(5):
            page.insert_text((50 + column * 105, 60 + row * 22), text(1 + (row + column) % 2, row + column), fontsize=9)
    page = doc.new_page()
    y = 60
    for line in range(20):
        size = (7, 9, 12, 16, 22)[line % 5]
        page.insert_text((50 + line * 7 % 100, y), text(1 + line % 8, line), fontsize=size)
        y += size * 1.8
    return doc.tobytes()


@pytest.mark.parametrize("adaptive", [False, True])
def test_the_library_reads_a_page_as_the_tesseract_command_does(tmp_path, adaptive):
    """A page that asks for no hOCR, ALTO or PDF is read through libtesseract (PAGE_PROGRAM),
    the others by the `tesseract` command, whose text is rebuilt from its TSV: both give
    tesseract's own text, the same words and confidences, the same TSV. The engine hands
    tesseract a BMP (engine.write_page); the command here reads a PGM: the format changes nothing."""
    doc = engine.open_pdf(varied_layouts_pdf())
    for index in range(doc.page_count):
        image = engine.render_page(doc, index, 150)
        library = engine.run_tesseract(
            image, lang="eng", dpi=150, tmpdir=str(tmp_path), formats=("tsv",), adaptive=adaptive
        )
        command = engine.run_tesseract(
            image, lang="eng", dpi=150, tmpdir=str(tmp_path), formats=("tsv", "hocr"), adaptive=adaptive
        )
        image.save(tmp_path / "page.pgm", format="PPM")
        argv = ["tesseract", str(tmp_path / "page.pgm"), "stdout", "-l", "eng", "--dpi", "150"]
        argv += ["-c", engine.SAUVOLA] if adaptive else []
        own = subprocess.run(argv, capture_output=True, check=True, env=engine.TESSERACT_ENV).stdout.decode().strip()
        assert library.text.count("\n\n") >= 2 and len(library.text.split()) > 50  # several paragraphs and lines
        assert library.text == command.text == own
        assert len(library.words) > 50 and library.words == command.words
        assert set(library.files) == {"tsv"} and library.files["tsv"] == command.files["tsv"]
        assert "hocr" in command.files


def test_which_pages_the_library_reads(tmp_path, monkeypatch):
    """By the library unless a format needs tesseract's renderers or the script runs right to left."""
    seen = []
    real = engine._run
    monkeypatch.setattr(engine, "_run", lambda argv, **kw: seen.append(argv) or real(argv, **kw))
    image = Image.open(io.BytesIO(factories.text_image("Which reader")))
    for formats, lang in [((), "eng"), (("tsv",), "eng+deu"), (("alto",), "eng"), (("pdf",), "eng")]:
        assert "Which" in engine.run_tesseract(image, lang=lang, dpi=144, tmpdir=str(tmp_path), formats=formats).text
    with pytest.raises(engine.OCRFailed):  # no Arabic installed here: which program ran is what counts
        engine.run_tesseract(image, lang="ara", dpi=144, tmpdir=str(tmp_path))
    assert [engine.PAGE_PROGRAM in argv for argv in seen] == [True, True, False, False, False]
    assert [argv[0] for argv in seen[2:]] == ["tesseract"] * 3


@pytest.mark.parametrize(
    ("lang", "from_tsv"),
    [
        ("eng", True),
        ("eng+deu", True),
        ("script/Latin", True),
        ("ara", False),
        ("eng+heb", False),
        ("script/Arabic", False),
    ],
)
def test_right_to_left_text_is_never_rebuilt_from_the_tsv(lang, from_tsv):
    """tesseract marks direction changes in the text of right-to-left languages, not in the TSV."""
    assert tesseract_text.left_to_right(lang) is from_tsv


def test_text_layer_is_read_without_ocr():
    doc = engine.open_pdf(factories.text_pdf(1))
    text = engine.page_text_layer(doc, 0)
    assert support.cer("\n".join(factories.page_lines(1)), text) < 0.01


@pytest.mark.parametrize(
    "data,kind",
    [
        (factories.text_image(format="PNG"), "png"),
        (factories.text_image(format="JPEG"), "jpeg"),
        (factories.text_image(format="BMP"), "bmp"),
        (factories.text_image(format="TIFF"), "tiff"),
        (factories.text_image(format="WEBP"), "webp"),
        (b"%PDF-1.7\n", "pdf"),
        (b"GIF89a....", None),
        (b"hello world", None),
    ],
)
def test_sniff_kind_judges_by_content(data, kind):
    assert engine.sniff_kind(data[:2048]) == kind


def test_preprocess_contrast_and_threshold():
    grey = Image.new("L", (4, 1))
    grey.putdata([0, 100, 140, 255])
    assert engine.preprocess(grey, contrast_level=1.0, threshold=0).tobytes() == bytes([0, 100, 140, 255])
    # threshold 512 cuts at 127.5: binarised
    assert engine.preprocess(grey, contrast_level=1.0, threshold=512).tobytes() == bytes([0, 0, 255, 255])
    # contrast 2 around 128: 100 -> 72, 140 -> 152
    assert engine.preprocess(grey, contrast_level=2.0, threshold=0).tobytes() == bytes([0, 72, 152, 255])


def test_broken_inputs_raise_engine_errors():
    with pytest.raises(engine.EngineError, match="could not be opened"):
        engine.open_pdf(b"%PDF-1.4 garbage")
    with pytest.raises(engine.EngineError, match="encrypted"):
        engine.open_pdf(factories.encrypted_pdf())
    with pytest.raises(engine.EngineError, match="more than the limit"):
        engine.open_pdf(factories.text_pdf(3), max_pages=2)
    with pytest.raises(engine.EngineError, match="decoded"):
        engine.load_image(factories.text_image()[:200])


@pytest.mark.parametrize("formats", [(), ("hocr",)], ids=["libtesseract", "tesseract-command"])
def test_cancel_scope_kills_tesseract_mid_page(tmp_path, formats):
    data = factories.slow_pdf(1)
    doc = engine.open_pdf(data)
    image = engine.preprocess(engine.render_page(doc, 0, 600), contrast_level=1.3, threshold=500)
    scope = engine.CancelScope()
    outcome = {}

    def run():
        try:
            engine.run_tesseract(image, lang="eng", dpi=600, scope=scope, tmpdir=str(tmp_path), formats=formats)
            outcome["result"] = "finished"
        except engine.Cancelled:
            outcome["result"] = "cancelled"

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: scope.running() == 1, timeout=10)
    time.sleep(0.3)
    (pid,) = tesseract_pids(str(tmp_path))  # the page's OCR process, known by its command line
    assert (engine.PAGE_PROGRAM.encode() in support.proc_cmdline(str(pid))) is (formats == ())
    assert scope.cancel() == 1
    thread.join(5)
    assert not thread.is_alive()
    assert outcome["result"] == "cancelled"
    assert tesseract_pids(str(tmp_path)) == []


@contextmanager
def a_running_tesseract(tmp_path):
    """The PID of a tesseract reading a slow 600 dpi page through the engine; killed after."""
    image = engine.preprocess(
        engine.render_page(engine.open_pdf(factories.slow_pdf(1)), 0, 600), contrast_level=1.3, threshold=500
    )
    scope = engine.CancelScope()
    thread = threading.Thread(
        target=lambda: pytest.raises(
            engine.Cancelled, engine.run_tesseract, image, lang="eng", dpi=600, scope=scope, tmpdir=str(tmp_path)
        )
    )
    thread.start()
    try:
        wait_for(lambda: tesseract_pids(str(tmp_path)), timeout=10, interval=0.005)
        (pid,) = tesseract_pids(str(tmp_path))
        yield pid
    finally:
        scope.cancel()
        thread.join(10)


def test_tesseract_yields_the_cpu_to_the_service(tmp_path):
    """Nice 10 for the process and, where the kernel groups sessions (autogroup), for its
    session's group too: there the process's own nice value only ranks it within its session."""
    with a_running_tesseract(tmp_path) as pid:
        nice = engine.TESSERACT_NICE
        assert nice > 0  # the default, 10
        wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) == nice, timeout=2, interval=0.005)
        if os.path.exists("/proc/self/autogroup"):  # "/autogroup-42 nice 10"
            autogroup = Path(f"/proc/{pid}/autogroup")
            wait_for(lambda: autogroup.read_text().split()[-1] == str(nice), timeout=2, interval=0.005)


def nice_in_a_session_of_its_own(*argv: str) -> tuple[int, str]:
    """(nice, autogroup line) of a new session's leader, run with `argv`, after lower_own_priority(7)."""
    code = (
        "import os, sys; from ocr.processes import lower_own_priority; lower_own_priority(7, session_of='qcluster');"
        "group = open('/proc/self/autogroup').read() if os.path.exists('/proc/self/autogroup') else '';"
        "print(os.getpriority(os.PRIO_PROCESS, 0), group.strip())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, start_new_session=True, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    nice, _, group = done.stdout.strip().partition(" ")
    return int(nice), group


def test_a_worker_lowers_its_session_group_only_when_the_session_is_the_qclusters_own():
    """The group's weight is the session's: a session shared with daphne (one shell that started
    both) must keep it. A session led by a qcluster (run.sh, harnesses) is lowered with it."""
    nice, group = nice_in_a_session_of_its_own("something else")
    assert nice == 7 and (not group or group.endswith("nice 0"))
    nice, group = nice_in_a_session_of_its_own("qcluster")
    assert nice == 7 and (not group or group.endswith("nice 7"))


def test_tesseract_heap_is_in_huge_pages_where_the_kernel_offers_them(tmp_path):
    """A killed tesseract is gone sooner with fewer page tables to free (engine.HUGE_PAGES)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("no transparent huge pages on this kernel")

    def huge_kb(pid: int) -> int:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return int(rollup.split("AnonHugePages:")[1].split()[0])

    with a_running_tesseract(tmp_path) as pid:
        wait_for(lambda: huge_kb(pid) > 0, timeout=5, interval=0.01)


def test_slots_limit_concurrency(tmp_path):
    slots = engine.TesseractSlots(str(tmp_path), 2)
    inside, peak, lock = [0], [0], threading.Lock()

    def hold():
        with slots.acquire():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2


def test_page_images_of_dead_workers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"{engine.PAGE_FILE_PREFIX}{dead.pid}-abc.pgm"
    mine = tmp_path / f"{engine.PAGE_FILE_PREFIX}{os.getpid()}-def.pgm"
    other = tmp_path / "unrelated.txt"
    for path in (orphan, mine, other):
        path.write_bytes(b"P5")
    assert engine.remove_orphan_pages(str(tmp_path)) == 1
    assert not orphan.exists() and mine.exists() and other.exists()
