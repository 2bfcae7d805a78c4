"""docs/cancellation.md cannot rot: every Python example in it runs against a live daphne and
real workers, except those marked `<!-- needs: FEATURE -->` (an endpoint or field this server
does not have yet), which are skipped with that reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import factories
from tests.conftest import WEBHOOK_TEST_PORT
from tests.support import tesseract_pids, wait_for

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "cancellation.md"
BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w-]+) -->\n)?```python\n(?P<code>.*?)```", re.S)


def examples() -> list:
    text = GUIDE.read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        marks = [pytest.mark.skip(reason=f"needs {match['needs']}: not on this server yet")] if match["needs"] else []
        found.append(pytest.param(match["code"], line, id=f"line{line}", marks=marks))
    return found


def test_the_guide_has_runnable_and_marked_examples():
    params = examples()
    assert len(params) >= 8
    assert sum(1 for p in params if not p.marks) >= 5
    for param in params:  # the skipped ones still compile
        code, line = param.values
        compile(code, f"{GUIDE}:{line}", "exec")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("code", "line"), examples())
def test_guide_example_runs(code, line, live_daphne, cluster, receiver, tmp_path, monkeypatch):
    (tmp_path / "scan.png").write_bytes(factories.text_image("Hello guide reader"))
    (tmp_path / "report.pdf").write_bytes(factories.slow_pdf(3))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OCR_URL", live_daphne)
    monkeypatch.delenv("OCR_TOKEN", raising=False)
    hook = f"/ok/guide-line{line}"
    monkeypatch.setenv("OCR_CALLBACK_URL", f"http://127.0.0.1:{WEBHOOK_TEST_PORT}{hook}")
    # line numbers in tracebacks point into the guide
    exec(compile("\n" * (line - 1) + code, str(GUIDE), "exec"), {"__name__": "__main__"})
    wait_for(lambda: not tesseract_pids(), timeout=10)  # no example leaves work running
    if "OCR_CALLBACK_URL" in code:  # the webhook example: its cancelled event really arrives
        wait_for(lambda: [r for r in receiver.at(hook) if r["body"]["type"] == "cancelled"], timeout=30)
