"""Page readers that stay: a libtesseract process (ocr/libtesseract.py, `serve` mode) reads the
pages of one task one after another, so that a page no longer pays for the program's start and
the language model's load: about 120 ms of CPU per page, 4% of a dense 300 dpi page here
(20 blank 300 dpi pages: 295 ms each read by a process of its own, 173 ms by one reader).

No Django here. A reader lives in a page folder of its own, named as any page folder
(processes.page_folder_prefix: the worker's pid and the task's id), and its command line names
its page image in that folder: the node's killer (ocr/killer.py) and the sweeper's orphan killer
(processes.kill_orphans) find it as they find a process that reads one page. While it reads a
page it is tracked by the task's CancelScope like any OCR process (a cancel kills it mid-page,
and the next page starts a new one); its CPU time counts for the task as long as it lives. A
reader between pages sleeps on its input and holds no tesseract slot. `PageReaders.close()`
ends them all (the page pipeline's end: readers never outlive one attempt of one task).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .processes import PAGE_PROGRAM, CancelScope, kill_group, page_folder_prefix, start_ocr_process

logger = logging.getLogger(__name__)

CLOSE_SECONDS = 2.0  # a reader told to stop (its input closed) is killed after this long


class PageReader:
    """One reader: a folder, and the process reading from it (started again after it died)."""

    def __init__(self, scope: CancelScope, folder: str, lang: str, memory_mb: int) -> None:
        self.scope = scope
        self.folder = folder
        self.lang = lang
        self.memory_mb = memory_mb
        self.image = os.path.join(folder, "page.bmp")  # the engine writes each page here
        self.outbase = os.path.join(folder, "out")
        self.proc: subprocess.Popen | None = None
        self.request = b""
        self.failure = b""  # what the last process wrote on stderr before it ended
        self._stderr = None

    def asking(self, dpi: int, adaptive: bool, tsv: bool) -> PageReader:
        """Set what the next page asks for (its resolution and options)."""
        self.request = b" ".join([str(dpi).encode(), *[b"adaptive"] * adaptive, *[b"tsv"] * tsv]) + b"\n"
        return self

    def start(self) -> subprocess.Popen:
        """The live process, started when there is none (or the last one died)."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        self.stop()
        self._stderr = open(os.path.join(self.folder, "stderr"), "w+b")  # never a full pipe
        argv = [sys.executable, "-I", "-S", PAGE_PROGRAM, self.image, self.outbase, self.lang, "0"]
        # it caps its own memory before libtesseract loads (MEMORY_MB), as for one page
        self.proc = start_ocr_process([*argv, str(self.memory_mb), "serve"], stdin=subprocess.PIPE, stderr=self._stderr)
        self.scope.add_resident(self.proc)
        logger.debug("task %s: page reader %d started (%s)", self.scope.label, self.proc.pid, self.lang)
        return self.proc

    def read(self) -> tuple[int, bytes]:
        """Ask the live process for the page: (0, b"") once read, else (its exit status, its
        stderr) once it is gone (a failed page ends it; the next page starts a new one)."""
        proc = self.proc
        try:
            proc.stdin.write(self.request)
            proc.stdin.flush()
            while line := proc.stdout.readline():  # `ok`, after anything the library may print
                if line == b"ok\n":
                    return 0, b""
        except OSError:  # killed before it read the request
            pass
        returncode = self.stop()  # it is ending: a failed page (its reason on stderr), or killed
        return (returncode if returncode else 1), self.failure

    def stop(self, wait: float = CLOSE_SECONDS) -> int | None:
        """End the process: its input closed, it ends on its own within `wait` s, else it is
        killed. Its exit status (None when there was none)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
        proc.stdout.close()
        self.scope.remove_resident(proc)
        self.failure = b""
        if self._stderr is not None:
            self._stderr.seek(0)
            self.failure = self._stderr.read()
            self._stderr.close()
            self._stderr = None
        return proc.returncode


class PageReaders:
    """The readers of one task's pipeline: each page borrows one (of its language) for its run."""

    def __init__(self, scope: CancelScope, *, tmpdir: str, memory_mb: int) -> None:
        self.scope = scope
        self.tmpdir = tmpdir
        self.memory_mb = memory_mb  # each reader's address space cap (0: none)
        self._lock = threading.Lock()
        self._idle: list[PageReader] = []
        self._all: list[PageReader] = []
        self.closed = False

    @contextmanager
    def borrow(self, lang: str) -> Iterator[PageReader]:
        """A reader of `lang` for one page (an idle one, else one more), borrowed inside the
        page's slot (engine.run_tesseract): a task has no more readers than slots. Its process
        starts on the page's run (engine._run) when it has none."""
        with self._lock:
            if self.closed:
                raise RuntimeError("page readers closed")
            reader = next((one for one in self._idle if one.lang == lang), None) or next(iter(self._idle), None)
            if reader is not None:
                self._idle.remove(reader)
        if reader is not None and reader.lang != lang:  # another language's reader: its folder is reused
            reader.stop(wait=0)
            reader.lang = lang
        if reader is None:
            folder = tempfile.mkdtemp(prefix=page_folder_prefix(self.scope.label, "reader"), dir=self.tmpdir)
            reader = PageReader(self.scope, folder, lang, self.memory_mb)
            with self._lock:
                self._all.append(reader)
        try:
            yield reader
        finally:
            try:
                os.unlink(reader.image)
            except FileNotFoundError:
                pass
            with self._lock:
                if self.closed:
                    reader.stop(wait=0)
                else:
                    self._idle.append(reader)

    def close(self) -> None:
        """End every reader and delete their folders. Readers are killed, not asked to stop: they
        are idle (nothing to lose), and a killed one gets its CPU share back to exit at once
        (processes.kill_group) where one at its low priority waits for the CPU to read its end
        of input, delaying its task's end on a busy machine."""
        with self._lock:
            self.closed = True
            readers, self._idle = list(self._all), []
        for reader in readers:
            reader.stop(wait=0)
            shutil.rmtree(reader.folder, ignore_errors=True)
