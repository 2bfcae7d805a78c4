"""Shared pieces of the benchmark scripts: an isolated service, clients, documents, figures.

`Service` starts the project's own processes (qcluster, the deadline sweeper, optionally daphne)
on a queue, channel prefix, slot directory, media directory, TMPDIR and database of their own
(`OCR_QUEUE_NAME=bench<pid>`), so that a running `make run` or test run is never disturbed, and
stops them all (process groups, plus any tesseract they left) at the end, even on error.
The benchmark process itself reads the same database through the Django ORM.

HTTP, SSE and WebSocket clients and process helpers come from tests/support.py (shared with the tests).
Everything logs to stderr; the scripts print one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ocr.processes import ocr_input  # noqa: E402
from tests.support import (  # noqa: E402  (shared with the tests; re-exported for the scripts)
    SSEClient,
    WebSocketClient,
    free_port,
    http_multipart,
    http_request,
    port_open,
    proc_cmdline,
    proc_ppid,
    tesseract_pids,
)

__all__ = ["SSEClient", "WebSocketClient", "http_multipart", "http_request", "proc_ppid", "tesseract_pids"]

PYTHON = sys.executable
CORES = os.cpu_count() or 1


def log(message: str, *args: object) -> None:
    text = message % args if args else message
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


# --- Figures -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in 0..100."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(values_ms: list[float]) -> dict:
    """count, p50, p95, p99, max (and min, mean) of a list of milliseconds, rounded to 0.1 ms."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "count": len(values_ms),
        "p50": r(percentile(values_ms, 50)),
        "p95": r(percentile(values_ms, 95)),
        "p99": r(percentile(values_ms, 99)),
        "max": r(max(values_ms) if values_ms else None),
        "min": r(min(values_ms) if values_ms else None),
        "mean": r(sum(values_ms) / len(values_ms) if values_ms else None),
    }


def timed_gets(
    base_url: str, path: str, count: int, *, headers: dict | None = None, expect: bytes = b""
) -> list[float]:
    """`count` GETs of `path` one after the other over one keep-alive connection: milliseconds
    each; an answer other than a 200 holding `expect` raises."""
    import http.client

    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200 or expect not in body:
                raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    finally:
        connection.close()
    return times


def settle_database() -> None:
    """The database as a running service's is, not as a burst of bulk inserts leaves it:
    PostgreSQL vacuumed and analysed (autovacuum's work within a minute of many inserts), SQLite's
    write-ahead log folded in (as checkpoints do as writes go on). SQLite gets no statistics: the
    service never asks for them."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
        else:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def parse_timestamp(value: str) -> float:
    """An ISO 8601 timestamp with timezone (as the API writes them) as epoch seconds."""
    return datetime.fromisoformat(value).timestamp()


# --- Documents -----------------------------------------------------------------------------

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there one all we their been has would when if more will about up out them so what its into "
    "than some could time these two may first then do any like other my now over such our man me even most made "
    "after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since against go came "
    "right used take three states himself few house use during without again place american around however home "
    "small found thought went say part once general high upon school every does got united left number course war "
    "until always away something fact though water less public put think almost hand enough far took head yet "
    "government system better set told nothing night end why called didn't eyes find going look asked later knew "
    "point next program city business give group toward young days let room president side social present given "
    "several order national second possible rather per face among form important often things looking early white "
    "case john become large big need four within felt children along saw best church ever least power development "
    "light thing seemed family interest want members mind country area others done turned although open problem "
    "invoice agreement contract payment section clause party shall hereby pursuant amount total balance account"
).split()


def document_text_lines(page_number: int, *, fontsize: float, width: float, height: float) -> list[str]:
    """Deterministic English-like paragraphs that fill a text block of `width` x `height` points."""
    import pymupdf

    rng = random.Random(page_number * 7919)
    line_height = fontsize * 1.25
    lines: list[str] = [f"Page {page_number}"]
    line = ""
    sentence_left = rng.randint(8, 20)
    capitalize = True
    while len(lines) * line_height < height:
        word = rng.choice(WORDS)
        if capitalize:
            word, capitalize = word.capitalize(), False
        sentence_left -= 1
        if sentence_left == 0:
            word += rng.choice((".", ".", ".", ";", "?"))
            sentence_left, capitalize = rng.randint(8, 20), True
        elif rng.random() < 0.05:
            word += ","
        elif rng.random() < 0.03:
            word = str(rng.randint(1, 99999))
        candidate = f"{line} {word}".strip()
        if pymupdf.get_text_length(candidate, fontname="helv", fontsize=fontsize) > width:
            lines.append(line)
            line = word
            if rng.random() < 0.08:
                lines.append("")  # paragraph break
        else:
            line = candidate
    return lines


def document_pdf(pages: int, *, first_page: int = 1, fontsize: float = 10.5, scan_dpi: int = 300) -> bytes:
    """An image-only PDF like a scanned report: US letter pages of dense `fontsize` pt text,
    rasterised in greyscale at `scan_dpi` (no text layer, so every page needs OCR)."""
    import pymupdf

    rect = pymupdf.paper_rect("letter")
    margin = 72
    out = pymupdf.open()
    for page_number in range(first_page, first_page + pages):
        source = pymupdf.open()
        page = source.new_page(width=rect.width, height=rect.height)
        lines = document_text_lines(
            page_number, fontsize=fontsize, width=rect.width - 2 * margin, height=rect.height - 2 * margin
        )
        for i, text in enumerate(lines):
            if text:
                page.insert_text((margin, margin + fontsize + i * fontsize * 1.25), text, fontsize=fontsize)
        pix = page.get_pixmap(dpi=scan_dpi, colorspace=pymupdf.csGRAY)
        new = out.new_page(width=rect.width, height=rect.height)
        new.insert_image(new.rect, pixmap=pix)
        source.close()
    data = out.tobytes(deflate=True)
    out.close()
    return data


# --- Processes -----------------------------------------------------------------------------


def code_version() -> str | None:
    """The project's commit (read-only git), with "+changes" when ocr/ or ocrsite/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "ocr", "ocrsite"], cwd=ROOT).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changed else "")


class TesseractSampler(threading.Thread):
    """Counts running tesseract processes every `interval` s, by the directory of their input
    file (`prefixes`: name -> directory); any other tesseract on the host counts as "foreign".
    Running: able to run at a sample and using the CPU until the next (see `sample`), so that
    a page reader sleeping between pages does not count.

    Equivalent to `pgrep -f '^tesseract '` but cheap enough to run at 50 Hz on 2 cores: a PID's
    command line is read once, when it first appears (pgrep itself costs ~8 ms of CPU per call,
    ~40% of a core at 50 Hz, which would distort the throughput it is meant to watch).
    """

    def __init__(self, prefixes: dict[str, str], interval: float = 0.02) -> None:
        super().__init__(name="tesseract-sampler", daemon=True)
        self.prefixes = {name: prefix.encode() for name, prefix in prefixes.items()}
        self.interval = interval
        self._stop_event = threading.Event()
        self._known: dict[str, tuple[str, int]] = {}  # pid -> (class name or "", times read)
        self._runnable: dict[str, str] = {}  # at the last sample: pid -> class name ...
        self._runnable_cpu: dict[str, int] = {}  # ... and its CPU time then (ns)
        self.maxima: dict[str, int] = {}
        self.sums: dict[str, int] = {}
        self.samples = 0
        self.reset()

    def reset(self) -> None:
        self.maxima = {name: 0 for name in [*self.prefixes, "foreign", "meta"]}
        self._runnable, self._runnable_cpu = {}, {}
        self.sums = dict.fromkeys(self.maxima, 0)
        self.samples = 0

    def mean(self, name: str) -> float:
        """Mean number of `name` tesseract processes running since the last reset."""
        return self.sums[name] / self.samples if self.samples else 0.0

    def _classify(self, argv: list[bytes]) -> str:
        page = ocr_input(argv)
        if page is None:
            return ""
        for name, prefix in self.prefixes.items():
            if page.encode().startswith(prefix):
                return name
        if page.startswith("-"):
            return "meta"  # tesseract --version / --list-langs: no page, no CPU to speak of
        return "foreign"

    def sample(self) -> dict[str, int]:
        pids = {pid for pid in os.listdir("/proc") if pid.isdigit()}
        counts = dict.fromkeys(self.maxima, 0)
        ocr: dict[str, str] = {}
        known = self._known
        for pid in known.keys() - pids:  # gone: its PID may be reused by the next process
            del known[pid]
        for pid in pids:
            entry = known.get(pid)
            if entry is None or (not entry[0] and entry[1] < 3):
                # A new process is read 3 times: between fork and exec it still shows its parent's command.
                argv = proc_cmdline(pid)
                if not argv or argv == [b""]:  # kernel thread, zombie or gone: look again next time
                    continue
                entry = known[pid] = (self._classify(argv), (entry[1] + 1) if entry else 1)
            if entry[0]:
                ocr[pid] = entry[0]
        # A process counts as running at the previous sample if it could run then (state R or
        # D) and used the CPU since: not a page reader (ocr/page_readers.py) that has just
        # answered and, preempted, has a few microseconds left before it sleeps between pages.
        now = {pid: cpu_ns(pid) for pid in ocr}
        for pid, name in self._runnable.items():
            if now.get(pid) is not None and now[pid] - self._runnable_cpu[pid] > KEPT_RUNNING_NS:
                counts[name] += 1
        self._runnable = {pid: name for pid, name in ocr.items() if now[pid] is not None and runnable(pid)}
        self._runnable_cpu = {pid: now[pid] for pid in self._runnable}
        return counts

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            counts = self.sample()
            self.samples += 1
            for name, count in counts.items():
                self.sums[name] += count
                if count > self.maxima[name]:
                    self.maxima[name] = count

    def stop(self) -> None:
        self._stop_event.set()


KEPT_RUNNING_NS = 500_000  # 0.5 ms of CPU between two samples (20 ms): the process kept running


def runnable(pid: str) -> bool:
    """Whether a process runs or waits for the CPU or a disk (not a page reader sleeping between
    pages: ocr/page_readers.py)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"R", b"D")
    except (OSError, IndexError):
        return False


def cpu_ns(pid: str) -> int | None:
    """CPU time of a process in nanoseconds (/proc/PID/schedstat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as handle:
            return int(handle.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU used on the host by others than us (`pids_of_ours` and this process, with reaped children).

    `foreign_cores()` since the last `mark()`: busy CPU time of the host (/proc/stat) minus ours,
    per second of wall time, so 1.0 means another program kept one core busy meanwhile.
    """

    def __init__(self, pids_of_ours) -> None:
        self.pids_of_ours = pids_of_ours
        self.tick = os.sysconf("SC_CLK_TCK")
        self.mark()

    def _snapshot(self) -> tuple[float, float, float]:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        ours = 0
        for pid in {os.getpid(), *self.pids_of_ours()}:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            values = stat[stat.rindex(b")") + 2 :].split()
            ours += sum(int(value) for value in values[11:15])  # utime stime cutime cstime
        return time.monotonic(), busy / self.tick, ours / self.tick

    def mark(self) -> None:
        self._start = self._snapshot()

    def foreign_cores(self) -> float:
        now, busy, ours = self._snapshot()
        start, busy0, ours0 = self._start
        return max(0.0, ((busy - busy0) - (ours - ours0)) / max(1e-9, now - start))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_groups(procs: list[subprocess.Popen], timeout: float = 10) -> None:
    """SIGTERM each leader, then SIGKILL its whole group (children left behind, or all of it
    after `timeout`). SIGTERM to the leader only: a qcluster whose whole group gets SIGTERM
    never stops (its sentinel waits for workers that died of the signal), measured here."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log("service: %s did not stop on SIGTERM, killed", proc.args[2:4])
        _signal_group(proc, signal.SIGKILL)  # also any child left in the group
        proc.wait()


class Service:
    """The service on its own queue, media, TMPDIR and database, as subprocesses.

    Database: a fresh SQLite file in the temp dir, or, when DATABASE_URL is set in the
    environment, a fresh PostgreSQL database `bench_<pid>` on that server (dropped at the end).
    """

    def __init__(
        self, *, http: bool = True, workers: int = CORES, extra_env: dict | None = None, web_processes: int = 1
    ) -> None:
        self.http = http
        self.web_processes = web_processes  # > 1: scripts/web.py, several daphne on one socket
        self.workers = workers
        self.extra_env = extra_env or {}
        self.queue = f"bench{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.queue}-"))
        self.tesseract_tmp = self.tmp / "tmp"  # TMPDIR of the services: tesseract inputs land here
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []
        self.pg_admin_url: str | None = None
        self.pg_name: str | None = None
        self.base_url = ""
        self.port = 0

    # -- database
    def _database_url(self) -> str:
        configured = os.environ.get("DATABASE_URL")
        if not configured or configured.startswith("sqlite"):
            return f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        import psycopg

        self.pg_admin_url = configured
        self.pg_name = f"bench_{os.getpid()}"
        with psycopg.connect(_psycopg_url(configured), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}"')
            conn.execute(f'CREATE DATABASE "{self.pg_name}"')
        parts = urlsplit(configured)
        return urlunsplit((parts.scheme, parts.netloc, f"/{self.pg_name}", parts.query, parts.fragment))

    def _drop_database(self) -> None:
        if not self.pg_name:
            return
        import psycopg

        with psycopg.connect(_psycopg_url(self.pg_admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    # -- lifecycle
    def __enter__(self) -> Service:
        # SIGTERM (a `timeout`, a CI cancel) unwinds through __exit__ like Ctrl-C, so nothing is left running.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.tesseract_tmp.mkdir()
        (self.tmp / "media").mkdir()
        self.database_url = self._database_url()
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "OCR_QUEUE_NAME": self.queue,
            "MEDIA_ROOT": str(self.tmp / "media"),
            "TMPDIR": str(self.tesseract_tmp),
            "OCR_WORKERS": str(self.workers),
            "RATE_LIMIT_REQUESTS": "100000/m",
            "OCR_CANCEL_RATE": "100000/m",
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "ocrsite.settings",
            **self.extra_env,
        }
        log("service: queue %s, database %s, tmp %s", self.queue, self.database_url, self.tmp)
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=self.env,
            check=True,
            stdout=sys.stderr,
        )
        self._setup_django()
        from django_q.brokers import get_broker

        get_broker().purge_queue()
        self._spawn("qcluster", [PYTHON, "manage.py", "qcluster"])
        self._spawn("sweeper", [PYTHON, "manage.py", "ocr_sweeper"])
        if self.http:
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
            if self.web_processes > 1:
                command = [PYTHON, "scripts/web.py", "127.0.0.1", str(self.port), str(self.web_processes)]
            else:
                command = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "ocrsite.asgi:application"]
            self._spawn("daphne", command)
        self._wait_ready()

    def _setup_django(self) -> None:
        """This process reads the same database through the ORM (statuses, PIDs, events)."""
        for key in ("DATABASE_URL", "OCR_QUEUE_NAME", "MEDIA_ROOT", "OCR_WORKERS", "DJANGO_SETTINGS_MODULE"):
            os.environ[key] = self.env[key]
        os.environ["LOG_LEVEL"] = "WARNING"
        import django

        django.setup()

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log_file = open(self.tmp / f"{name}.log", "ab")
        self.names.append(name)
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        log_file.close()
        return proc

    def add_worker_node(self, name: str, timeout: float = 60) -> subprocess.Popen:
        """Another worker node (a qcluster of `self.workers` workers and its sweeper, as
        `OCR_ROLE=worker make run` starts) on the same database and queue, with its own node name
        and slot folder (under TMPDIR: stop() kills its leftovers). Returns its qcluster."""
        slot_dir = self.tesseract_tmp / f"{name}-slots"
        env = {"OCR_NODE_NAME": name, "OCR_SLOT_DIR": str(slot_dir)}
        proc = self._spawn(name, [PYTHON, "manage.py", "qcluster"], env)
        self._spawn(f"{name}-sweeper", [PYTHON, "manage.py", "ocr_sweeper"], env)
        self._wait_ready(timeout, workers=self.workers * 2)
        return proc

    def remove_worker_node(self, proc: subprocess.Popen) -> None:
        """Stop a node: its qcluster `proc` (and the sweeper of a node added by add_worker_node)."""
        name = self.names[self.procs.index(proc)]
        sweeper = f"{name}-sweeper" if name != "qcluster" else None
        self._stop_named([name] + ([sweeper] if sweeper in self.names else []))

    def web_only(self) -> None:
        """This service's own node becomes a web node, daphne alone, as `OCR_ROLE=web make run`
        starts it: its qcluster and sweeper stop (add a worker node first)."""
        self._stop_named(["qcluster", "sweeper"])

    def _stop_named(self, names: list[str]) -> None:
        stop_groups([self.procs[self.names.index(name)] for name in names])
        for name in names:
            index = self.names.index(name)
            del self.procs[index], self.names[index]

    def log_text(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout: float = 60, workers: int | None = None) -> None:
        from django_q.brokers import get_broker
        from django_q.status import Stat

        deadline = time.monotonic() + timeout
        broker = get_broker()
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{self._logs()[-3000:]}")
            alive = sum(len(stat.workers) for stat in Stat.get_all(broker))
            http_ok = not self.http or port_open(self.port)
            if alive >= (workers or self.workers) and http_ok:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"service did not start within {timeout} s:\n{self._logs()[-3000:]}")
            time.sleep(0.1)
        log("service: ready (%d workers%s)", self.workers, f", {self.base_url}" if self.http else "")

    def _logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log_text(name)}" for name in ("qcluster", "sweeper", "daphne"))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each service (`qcluster`, `sweeper`, `daphne`: its whole
        process group) and by the tesseract processes they ran and reaped (`tesseract`)."""
        tick = os.sysconf("SC_CLK_TCK")
        totals = {name: 0.0 for name in [*self.names, "tesseract"]}
        for name, proc in zip(self.names, self.procs, strict=True):
            out = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout
            for pid in out.split():
                try:
                    with open(f"/proc/{pid}/stat", "rb") as handle:
                        stat = handle.read()
                except OSError:
                    continue
                values = [int(value) for value in stat[stat.rindex(b")") + 2 :].split()[11:15]]
                totals[name] += (values[0] + values[1]) / tick
                totals["tesseract"] += (values[2] + values[3]) / tick  # reaped children: tesseract
        return totals

    def pids(self) -> set[int]:
        """PIDs of every process of our services' process groups (qcluster workers included)."""
        if not self.procs:
            return set()
        groups = ",".join(str(proc.pid) for proc in self.procs)
        out = subprocess.run(["pgrep", "-g", groups], capture_output=True, text=True).stdout
        return {int(pid) for pid in out.split()}

    def cpu_meter(self) -> CpuMeter:
        """Foreign CPU meter: ours are the service processes, their tesseracts and this process."""
        return CpuMeter(lambda: self.pids() | set(tesseract_pids(str(self.tmp))))

    def stop(self) -> None:
        stop_groups(self.procs)
        # Tesseract runs in its own session: kill any our workers left behind (input under our TMPDIR).
        for pid in tesseract_pids(str(self.tesseract_tmp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self._clean_redis()
        except Exception as exc:
            log("service: could not clean Redis keys: %s", exc)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        try:
            self._drop_database()
        except Exception as exc:
            log("service: could not drop database %s: %s", self.pg_name, exc)
        if os.environ.get("BENCH_KEEP_TMP"):
            log("service: logs kept in %s", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        log("service: stopped")

    def _clean_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        keys = list(client.scan_iter(f"*{self.queue}*", count=1000))
        if keys:
            client.delete(*keys)

    # -- HTTP
    def submit_pdf(self, data: bytes, request: dict, *, path: str = "/v1/ocr/process-pdf", name: str = "doc.pdf"):
        """POST a PDF; returns (wall-clock time before sending, status, JSON body)."""
        started = time.time()
        status, body = http_multipart(self.base_url, path, {"request": json.dumps(request)}, {"file": (name, data)})
        if status != 202:
            raise RuntimeError(f"submit answered {status}: {body}")
        return started, body


def _psycopg_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql", "pgsql", "psql") else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))
