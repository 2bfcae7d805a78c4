"""Page readers that stay (ocr/page_readers.py): one process reads many pages with the same
results as a process per page, a cancel or the node's killer kills it mid-page, a failed or
killed reader is replaced for the next page, its CPU counts for its task, and nothing is left
once the readers are closed."""

import os
import signal
import threading
import uuid

import pytest

from ocr import engine, killer, processes
from ocr.page_readers import PageReaders

from . import factories
from .support import alive, wait_for


def page(text: str, size=(1400, 300)):
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(factories.text_image(text, size=size))).convert("L")


@pytest.fixture
def readers(tmp_path):
    scope = engine.CancelScope(label=str(uuid.uuid4()))
    pool = PageReaders(scope, tmpdir=str(tmp_path), memory_mb=2000)
    yield pool
    pool.close()


def reader_pids(pool: PageReaders) -> list[int]:
    return [reader.proc.pid for reader in pool._all if reader.proc is not None]


def test_one_reader_reads_pages_as_processes_of_their_own_do(readers, tmp_path):
    pages = [
        (page("Invoice number 4711 paid"), {"dpi": 300}),
        (page("Second page with other words"), {"dpi": 200, "adaptive": True, "formats": ("tsv",)}),
        (page("Invoice number 4711 paid"), {"dpi": 300}),
    ]
    pids = set()
    for image, options in pages:
        alone = engine.run_tesseract(image, lang="eng", tmpdir=str(tmp_path), **options)
        read = engine.run_tesseract(image, lang="eng", scope=readers.scope, readers=readers, **options)
        assert (read.text, read.words, read.files) == (alone.text, alone.words, alone.files)
        assert read.text and read.words
        pids.update(reader_pids(readers))
    assert len(pids) == 1 and alive(pids.pop())
    folders = [reader.folder for reader in readers._all]
    assert os.listdir(folders[0]) and not os.path.exists(readers._all[0].image)  # no page left
    readers.close()
    assert not reader_pids(readers) and not any(os.path.exists(folder) for folder in folders)


def test_a_failed_or_killed_reader_is_replaced_for_the_next_page(readers):
    image = page("Replaced readers read on")
    with pytest.raises(engine.OCRFailed, match="could not load the language"):
        engine.run_tesseract(image, lang="xx_none", dpi=300, scope=readers.scope, readers=readers)
    assert engine.run_tesseract(image, lang="eng", dpi=300, scope=readers.scope, readers=readers).text
    first = reader_pids(readers)[0]
    os.kill(first, signal.SIGKILL)  # between pages, as the node's killer may
    wait_for(lambda: not alive(first) or readers._all[0].proc.poll() is not None, timeout=5)
    assert "Replaced" in engine.run_tesseract(image, lang="eng", dpi=300, scope=readers.scope, readers=readers).text
    assert reader_pids(readers)[0] != first
    assert len(readers._all) == 1  # the folder is reused


def test_its_cpu_counts_for_the_task_while_it_lives_and_after(readers):
    engine.run_tesseract(page("Counting seconds"), lang="eng", dpi=300, scope=readers.scope, readers=readers)
    idle = readers.scope.cpu_seconds()
    assert idle > 0.02  # the reader sleeps between pages, its CPU time still counts
    readers.close()
    assert readers.scope.cpu_seconds() >= idle * 0.99  # now a reaped child


@pytest.mark.parametrize("by", ["scope", "node killer"])
def test_a_reader_is_killed_mid_page(tmp_path, by):
    task_id = str(uuid.uuid4())
    scope = engine.CancelScope(label=task_id)
    pool = PageReaders(scope, tmpdir=str(tmp_path), memory_mb=0)
    slow = engine.render_page(engine.open_pdf(factories.slow_pdf(1)), 0, 600)
    ended = []

    def read():
        try:
            engine.run_tesseract(slow, lang="eng", dpi=600, scope=scope, readers=pool)
            ended.append("completed")
        except engine.Cancelled:
            ended.append("cancelled")

    thread = threading.Thread(target=read)
    thread.start()
    try:
        wait_for(lambda: reader_pids(pool) and processes.process_cpu(reader_pids(pool)[0]) > 0.3, timeout=30)
        pid = reader_pids(pool)[0]
        if by == "scope":
            assert scope.cancel() == 1
        else:
            killed: set[int] = set()
            assert killer.kill_task_processes(str(tmp_path), os.listdir(tmp_path), task_id, killed) == 1
            assert killed == {pid}
            scope.cancel()  # the watcher's word (engine._run waits for it)
        thread.join(10)
        assert ended == ["cancelled"] and not alive(pid)
    finally:
        scope.cancel()
        thread.join(30)
        pool.close()
    assert os.listdir(tmp_path) == []


def test_a_reader_s_memory_is_capped(tmp_path):
    """OCR_TESSERACT_MAX_MEMORY_MB holds for a reader as for a process per page: over it, the
    page fails (and the reader with it), it does not take the host down."""
    scope = engine.CancelScope(label=str(uuid.uuid4()))
    capped = PageReaders(scope, tmpdir=str(tmp_path), memory_mb=20)
    try:
        with pytest.raises(engine.OCRFailed):
            engine.run_tesseract(page("Memory cap"), lang="eng", dpi=144, scope=scope, readers=capped)
        assert not reader_pids(capped)
    finally:
        capped.close()
