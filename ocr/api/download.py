"""GET /v1/ocr/tasks/{id}/download?format=... (and under each typed prefix): a terminal task's
pages as one document (API.md section 9); the assembling lives in ocr/outputs.py."""

from __future__ import annotations

import logging
import tempfile

from django.http import FileResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from .. import outputs
from ..exceptions import DomainError, InvalidInput, TaskConflict
from ..kinds import Kind
from ..models import OCRPage, OCRTask
from . import schema
from .common import visible_task
from .serializers import TaskSerializer

logger = logging.getLogger(__name__)


class InputGone(DomainError):
    status_code = 410


def _pages(task: OCRTask, *, with_pdf: bool = False):
    pages = OCRPage.objects.filter(task_id=task.pk).order_by("page_number")
    if not with_pdf:
        pages = pages.defer("text_pdf")
    return pages.iterator(chunk_size=50)


class DownloadView(generics.GenericAPIView):
    kind: Kind | None = None
    serializer_class = TaskSerializer
    renderer_classes = [JSONRenderer]  # errors and the json format; the documents are sent as they are

    def perform_content_negotiation(self, request, force=False):
        # `?format=` names the document here, not one of DRF's renderers (its URL format override)
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=list(outputs.DOWNLOAD_FORMATS), required=False, default="text"),
        ],
        responses={
            (200, "text/plain"): OpenApiTypes.STR,
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "application/pdf"): OpenApiTypes.BINARY,
            (200, "application/xhtml+xml"): OpenApiTypes.STR,
            (200, "application/xml"): OpenApiTypes.STR,
            (200, "text/tab-separated-values"): OpenApiTypes.STR,
            400: schema.error("Unknown format", "format: 'docx' is not one of text, json, words, hocr, alto, tsv, pdf"),
            404: schema.ErrorSerializer,
            409: schema.error(
                "Format not requested at submit, or task not finished",
                "format 'hocr' was not requested: submit with request.outputs including 'hocr' "
                "(this task's outputs: text)",
            ),
            410: OpenApiResponse(schema.ErrorSerializer, "The input file is gone (retention)"),
        },
        description="The task's pages as one document. Header `OCR-Pages: done/total` (a cancelled task holds "
        "the pages finished before the cancel).",
    )
    def get(self, request: Request, task_id: str):
        task = visible_task(request, task_id, kind=self.kind)
        output_format = request.query_params.get("format", "text")
        if output_format not in outputs.DOWNLOAD_FORMATS:
            raise InvalidInput(f"format: {output_format[:50]!r} is not one of {', '.join(outputs.DOWNLOAD_FORMATS)}")
        requested = task.parameters.outputs
        if not outputs.is_available(output_format, requested):
            raise TaskConflict(
                f"format {output_format!r} was not requested: submit with request.outputs including "
                f"{output_format!r} (this task's outputs: {', '.join(requested)})",
                field="outputs",
            )
        if output_format == "json":
            return self.attach(Response(TaskSerializer(task, context={"request": request}).data), task, "json")
        if task.is_active:
            raise TaskConflict(f"Task {task.pk} is {task.status}: downloads are ready once it is terminal")
        if not OCRPage.objects.filter(task_id=task.pk).exists():
            raise TaskConflict(f"Task {task.pk} has no pages to download ({task.status})")
        logger.info("task %s: download %s", task.pk, output_format)
        if output_format == "pdf":
            return self.attach(self.pdf(task), task, "pdf")
        chunks = {
            "text": lambda: outputs.text_chunks(_pages(task)),
            "words": lambda: outputs.words_chunks(_pages(task)),
            "tsv": lambda: outputs.tsv_chunks(_pages(task)),
            "hocr": lambda: outputs.hocr_chunks(_pages(task), title=task.input_name, count=task.total_pages),
            "alto": lambda: outputs.alto_chunks(_pages(task), file_name=task.input_name),
        }[output_format]()
        response = StreamingHttpResponse(
            (chunk.encode() for chunk in chunks), content_type=outputs.MEDIA_TYPES[output_format]
        )
        return self.attach(response, task, output_format)

    def pdf(self, task: OCRTask) -> FileResponse:
        if not task.input_file:
            raise InputGone(f"Task {task.pk}: the input file is gone (retention), the PDF cannot be made")
        try:
            with task.input_file.open("rb") as handle:
                source = handle.read()
        except OSError:
            raise InputGone(f"Task {task.pk}: the input file is gone (retention), the PDF cannot be made") from None
        out_file = tempfile.TemporaryFile()  # closed (and deleted) by FileResponse when sent
        written = outputs.write_pdf(
            _pages(task, with_pdf=True), source=source, is_pdf=task.kind.is_pdf, out_file=out_file
        )
        out_file.seek(0)
        logger.info("task %s: searchable PDF of %d pages", task.pk, written)
        return FileResponse(out_file, content_type=outputs.MEDIA_TYPES["pdf"])

    @staticmethod
    def attach(response, task: OCRTask, output_format: str):
        """Headers every download carries: how many pages of how many, and a file name."""
        stem = (task.input_name.rsplit(".", 1)[0] if task.input_name else "") or str(task.pk)
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:100]
        response["OCR-Pages"] = f"{task.processed_pages}/{task.total_pages}"
        response["Content-Disposition"] = f'attachment; filename="{stem}.{outputs.FILE_SUFFIXES[output_format]}"'
        response["Access-Control-Expose-Headers"] = "OCR-Pages, Content-Disposition"
        return response
