"""`ocr-client FILE...`: submit each file, show its progress on stderr, print its pages' text on
stdout as they arrive; Ctrl-C cancels the server-side task (reason `Client interrupted`) and
exits with status 130."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import IO, Any

import httpx

from .errors import APIError, NotFound, OCRClientError
from .sync import Client, TaskHandle
from .types import Event, Task

logger = logging.getLogger(__name__)

INTERRUPT_REASON = "Client interrupted"
FORMATS = ("text", "json", "pdf", "hocr", "alto", "tsv", "words")
EXTENSIONS = {"text": "txt", "json": "json", "pdf": "pdf", "hocr": "hocr", "alto": "xml", "tsv": "tsv", "words": "json"}
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ocr-client", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="images or PDFs")
    parser.add_argument("--url", help="server base URL (default: $OCR_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default: $OCR_TOKEN)")
    parser.add_argument("--stream", action="store_true", help="use the streaming submit (PDFs)")
    parser.add_argument("--llm", action="store_true", help="refine each page with the LLM")
    parser.add_argument("--output-format", choices=FORMATS, default="text")
    parser.add_argument("-o", "--output", metavar="PATH", help="write the result here (a folder for several files)")
    parser.add_argument("--priority", choices=("low", "normal", "high"))
    parser.add_argument("--deadline", type=int, metavar="S", help="cancel on the server after S seconds")
    parser.add_argument("--request", metavar="JSON", help="other request parameters, e.g. '{\"dpi\": 600}'")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests and reconnects on stderr")
    args = parser.parse_args(argv)
    try:
        args.request = json.loads(args.request) if args.request else {}
    except ValueError as exc:
        parser.error(f"--request is not JSON: {exc}")
    if not isinstance(args.request, dict):
        parser.error("--request must be a JSON object")
    if args.deadline is not None and args.deadline <= 0:
        parser.error("--deadline must be a positive number of seconds")
    if args.output_format not in ("text", "json"):
        # a format must be asked for at submit to be downloadable (API.md section 9)
        outputs = list(args.request.get("outputs") or ["text"])
        args.request["outputs"] = outputs + ([args.output_format] if args.output_format not in outputs else [])
    return args


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal, one line per event otherwise."""

    def __init__(self, stream: IO[str], enabled: bool = True, width: int = 30) -> None:
        self.stream, self.enabled, self.width = stream, enabled, width
        self.tty = stream.isatty()
        self.drawn = False

    def update(self, event: Event) -> None:
        if not self.enabled:
            return
        total = event.get("total_pages") or 0
        done = (event.get("processed_pages") or 0) + (event.get("failed_pages") or 0)
        percent = float(event.get("progress_percentage") or (100.0 * done / total if total else 0.0))
        filled = int(self.width * min(percent, 100.0) / 100)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {percent:5.1f}%  {done}/{total} pages  {event['type']}"
        self.stream.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        """Wipe the bar's line on a terminal, so that page text printed next starts clean."""
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def finish(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def page_texts(task: Task) -> list[tuple[int, str]]:
    result = task.get("result") or {}
    if "results" in result:
        return [(page.get("page_number", 0), page.get("extracted_text") or "") for page in result["results"]]
    return [(1, result["extracted_text"])] if result.get("extracted_text") else []


def output_path(args: argparse.Namespace, source: str) -> Path | None:
    if not args.output:
        return None
    target = Path(args.output)
    if len(args.files) > 1 or target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return target / f"{Path(source).stem}.{EXTENSIONS[args.output_format]}"
    return target


def follow(handle: TaskHandle, args: argparse.Namespace, bar: ProgressBar) -> Task:
    """Print each page's text as its event arrives (text to stdout only); return the final task."""
    printed: set[int] = set()
    live_text = args.output_format == "text" and not args.output
    for event in handle.events():
        bar.update(event)
        page = event.get("latest_page_result")
        if live_text and event["type"] == "page_completed" and page and page.get("page_number") not in printed:
            bar.clear()
            sys.stdout.write((page.get("extracted_text") or "").rstrip("\n") + "\n")
            sys.stdout.flush()
            printed.add(page.get("page_number", 0))
    bar.finish()
    task = handle.refresh()
    if live_text:  # pages whose event carried no text (e.g. an image task's single result)
        for number, text in sorted(page_texts(task)):
            if number not in printed and text:
                sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()
    return task


def write_output(client: Client, task: Task, args: argparse.Namespace, source: str) -> None:
    target = output_path(args, source)
    if args.output_format == "text":
        if target is not None:
            target.write_text("\f".join(text for _, text in sorted(page_texts(task))), encoding="utf-8")
        return
    try:
        content = client.download(task["task_id"], args.output_format).content
    except NotFound:
        if args.output_format != "json":
            raise
        # a server without the download endpoint: `json` is the task representation itself
        content = json.dumps(client.get(task["task_id"]), indent=2).encode() + b"\n"
    if target is not None:
        target.write_bytes(content)
    else:
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()


def run_file(client: Client, path: str, args: argparse.Namespace, state: dict[str, Any]) -> Task:
    submitted = client.submit(
        path,
        request=args.request,
        llm=args.llm,
        mode="stream" if args.stream else "async",
        priority=args.priority,
        deadline_seconds=args.deadline,
    )
    handle = state["current"] = TaskHandle(client, submitted)
    sys.stderr.write(f"task: {handle.id}\n")
    sys.stderr.flush()
    task = follow(handle, args, ProgressBar(sys.stderr, enabled=not args.quiet))
    summary = f"task {handle.id}: {task['status']}"
    if task.get("cancellation_reason") or task.get("error_message"):
        summary += f" ({task.get('cancellation_reason') or task.get('error_message')})"
    sys.stderr.write(summary + "\n")
    if task["status"] in ("completed", "cancelled", "failed") and (args.output or args.output_format != "text"):
        write_output(client, task, args, path)
    return task


def interrupt(state: dict[str, Any]) -> int:
    """Ctrl-C: cancel the task in flight (a second Ctrl-C cannot stop that), then exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handle: TaskHandle | None = state.get("current")
    if handle is not None and not handle.done:
        logger.info("task %s: interrupted, cancelling", handle.id)
        try:
            try:
                answer = handle.cancel(INTERRUPT_REASON)
            except httpx.TransportError:  # the interrupted client's connection may be broken
                with Client(handle.client.base_url, handle.client.token) as fresh:
                    handle.client = fresh
                    answer = handle.cancel(INTERRUPT_REASON)
            sys.stderr.write(f"\ntask {handle.id}: {answer['status']} ({answer['cancellation_reason']})\n")
        except (APIError, OCRClientError, OSError, httpx.HTTPError) as exc:
            sys.stderr.write(f"\ntask {handle.id}: cancel failed: {exc}\n")
    sys.stderr.flush()
    return EXIT_INTERRUPTED


def run_all(client: Client, args: argparse.Namespace, state: dict[str, Any]) -> int:
    exit_code = 0
    for path in args.files:
        try:
            task = run_file(client, path, args, state)
        except (APIError, OSError, ValueError, OCRClientError) as exc:
            sys.stderr.write(f"{path}: {exc}\n")
            exit_code = 1
            continue
        finally:
            if state["current"] is not None and state["current"].done:
                state["current"] = None
        if task["status"] != "completed":
            exit_code = 1
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:  # reconnects and the cancel; stderr's first line stays `task: <id>`
        logging.getLogger("ocrsite_client").setLevel(logging.INFO)
    state: dict[str, Any] = {"current": None}
    # made once: a new httpx client costs 0.3-0.7 s here (its SSL context), too slow for Ctrl-C
    client = Client(args.url, args.token)
    try:
        return run_all(client, args, state)
    except KeyboardInterrupt:
        return interrupt(state)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
