"""Priorities (API.md section 8): the start order, queue positions, preemption when full, and
real workers starting the high-priority task first."""

import json
import random
import uuid
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from ocr import scheduling, services, tasks
from ocr.models import OCRTask
from tests import factories
from tests.support import wait_for


def submit(priority="normal", *, owner=None, **kwargs) -> OCRTask:
    task = factories.submit_task("pdf", owner=owner, **kwargs)
    OCRTask.objects.filter(pk=task.pk).update(priority=priority)
    return task


@pytest.mark.django_db
def test_high_first_then_oldest_first(no_worker):
    low = submit("low")
    normal = submit("normal")
    high = submit("high")
    later_high = submit("high")
    assert scheduling.start_order() == [high.pk, later_high.pk, normal.pk, low.pk]


@pytest.mark.django_db
def test_one_clients_many_tasks_do_not_hold_back_another_client(no_worker):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    alices = [submit(owner=alice) for _ in range(20)]
    bobs = submit(owner=bob)
    order = scheduling.start_order()
    assert order.index(bobs.pk) <= 1 and order[0] == alices[0].pk
    # one of alice's tasks is running: bob's comes first
    services.task_start(task_id=alices[0].pk, total_pages=1)
    assert scheduling.start_order()[0] == bobs.pk


def merged_in_python() -> list:
    """The start order as API.md section 8 states it, merged in Python (the old implementation):
    per priority, each client's queue oldest first; the next task is that of the client with the
    fewest tasks running or taken before, ties to the older task."""
    running = Counter(
        scheduling.client_of(*row)
        for row in OCRTask.objects.filter(status="processing").values_list("owner_id", "session_key", "id")
    )
    queues = defaultdict(list)
    pending = OCRTask.objects.filter(status="pending").order_by("created_at", "id")
    for place, (pk, priority, owner_id, session_key) in enumerate(
        pending.values_list("id", "priority", "owner_id", "session_key")
    ):
        client = scheduling.client_of(owner_id, session_key, pk)
        queues[(scheduling.PRIORITY_RANK[priority], client)].append((place, pk))
    keyed = []
    for (rank, client), queue in queues.items():
        keyed += [((rank, running[client] + turn, place), pk) for turn, (place, pk) in enumerate(queue)]
    return [pk for _, pk in sorted(keyed)]


@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(4))
def test_the_database_sorts_the_queue_as_the_round_robin_merge_does(seed):
    """Random queues (users, anonymous sessions, session-less tasks, running tasks, the three
    priorities, many equal created_at so that ids break ties): the start order, its first few,
    every task's queue position (counted by scheduling.queue_place) and the positions in a list
    are those of the merge in Python."""
    rng = random.Random(seed)
    users = [User.objects.create_user(f"user{seed}-{n}") for n in range(3)]
    clients = [{"owner": user} for user in users] + [{"session_key": f"s{n}"} for n in range(3)] + [{}]
    clients.append({"owner": users[0], "session_key": "s0"})  # a user's tasks from two sessions: one client
    now = timezone.now()
    stamps = [now - timedelta(seconds=rng.randrange(3)) for _ in range(60)]
    made = OCRTask.objects.bulk_create(
        OCRTask(
            task_type="pdf",
            status=rng.choice(["pending"] * 5 + ["processing", "completed"]),
            priority=rng.choice(["high", "normal", "normal", "low"]),
            **rng.choice(clients),
        )
        for _ in stamps
    )
    for task, stamp in zip(made, stamps, strict=True):  # bulk_create stamps them all "now"
        OCRTask.objects.filter(pk=task.pk).update(created_at=stamp)
    expected = merged_in_python()
    assert len(expected) > 20 and scheduling.start_order() == expected
    assert scheduling.start_order(limit=5) == expected[:5]
    busy = OCRTask.objects.filter(status="processing").count()
    for task in OCRTask.objects.all():
        place = scheduling.queue_place(task)
        if task.pk in expected:
            assert place == (expected.index(task.pk) + 1, busy)
        else:
            assert place is None and task.status != "pending"
    listed = APIClient()
    listed.force_authenticate(users[0])
    body = listed.get("/v1/ocr/tasks?status=pending&page_size=100").json()
    positions = {item["task_id"]: item["queue_position"] for item in body["results"]}
    assert positions and all(positions[str(pk)] == expected.index(pk) + 1 for pk in map(uuid.UUID, positions))


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_candidates_were_all_taken_reads_the_order_again(no_worker, monkeypatch):
    """Two jobs picking at once: the other job started this job's task (the first of the start
    order), and this one read the order before a later submit committed. It must start that
    later task, not end idle: that left the task without a job until the sweeper re-queued it a
    minute later (seen in benchmarks/throughput.py's queue case: 6 tasks submitted at once)."""
    taken = submit()
    services.task_start(task_id=taken.pk, total_pages=1)  # by the other job, meanwhile
    late = submit()  # committed after this job read the order
    real, reads = scheduling.start_order, []

    def stale_then_real(limit=None):
        reads.append(limit)
        return [taken.pk] if len(reads) == 1 else real(limit=limit)

    monkeypatch.setattr(scheduling, "start_order", stale_then_real)
    tasks.process_task(str(taken.pk))
    late.refresh_from_db()
    assert late.status == "completed" and len(reads) >= 2


@pytest.mark.django_db(transaction=True)
def test_a_job_starts_its_task_alone_without_the_order_but_never_past_another(no_worker, monkeypatch):
    """The only pending task is started without reading the start order (an idle service's
    submits); with another one pending the order decides, so a job never starts its own task
    past a higher-priority one."""
    real, reads = scheduling.start_order, []
    monkeypatch.setattr(scheduling, "start_order", lambda limit=None: reads.append(limit) or real(limit=limit))
    alone = submit()
    tasks.process_task(str(alone.pk))
    alone.refresh_from_db()
    assert alone.status == "completed" and reads == []
    normal = submit()
    high = submit("high")
    tasks.process_task(str(normal.pk))
    normal.refresh_from_db()
    high.refresh_from_db()
    assert (high.status, normal.status) == ("completed", "pending") and reads


@pytest.mark.django_db
def test_task_json_has_priority_queue_position_and_estimate(no_worker):
    client = APIClient()
    done = submit("normal", start=True)  # a finished task feeds the estimate
    factories.record_page(task_id=done.pk, page_number=1)
    services.task_finish(task_id=done.pk)
    first = submit("normal")
    high = submit("high")
    body = client.get(f"/v1/ocr/tasks/{first.pk}").json()
    assert body["priority"] == "normal" and body["queue_position"] == 2
    assert body["estimated_start_seconds"] >= 0
    assert client.get(f"/v1/ocr/tasks/{high.pk}").json()["queue_position"] == 1
    services.task_start(task_id=high.pk, total_pages=1)
    body = client.get(f"/v1/ocr/tasks/{high.pk}").json()
    assert body["queue_position"] is None and body["estimated_start_seconds"] is None


@pytest.mark.django_db
def test_priority_is_validated_and_stored(no_worker):
    client = APIClient()
    upload = {"file": SimpleUploadedFile("a.png", factories.text_image()), "request": json.dumps({"priority": "top"})}
    response = client.post("/v1/ocr/process", upload, format="multipart")
    assert response.status_code == 400 and "request.priority" in response.json()["detail"]
    upload = {"file": SimpleUploadedFile("a.png", factories.text_image()), "request": json.dumps({"priority": "high"})}
    response = client.post("/v1/ocr/process", upload, format="multipart")
    assert response.status_code == 202 and response.json()["priority"] == "high"


@pytest.mark.django_db
def test_high_priority_submit_preempts_the_newest_low_task_when_full(no_worker, settings):
    settings.MAX_CONCURRENT_TASKS = 3
    client = APIClient()
    older_low, newer_low, normal = submit("low"), submit("low"), submit("normal")

    def post(priority):
        upload = {
            "file": SimpleUploadedFile("a.png", factories.text_image()),
            "request": json.dumps({"priority": priority}),
        }
        return client.post("/v1/ocr/process", upload, format="multipart")

    refused = post("normal")
    assert refused.status_code == 503 and refused.has_header("Retry-After")
    accepted = post("high")
    assert accepted.status_code == 202, accepted.content
    preempted = OCRTask.objects.get(pk=newer_low.pk)
    assert preempted.status == "cancelled" and preempted.cancelled_by == "system"
    assert preempted.cancellation_reason == "Preempted by higher-priority work"
    assert OCRTask.objects.get(pk=older_low.pk).status == "pending"
    assert OCRTask.objects.get(pk=normal.pk).status == "pending"


@pytest.mark.django_db(transaction=True)
def test_workers_start_the_high_priority_task_before_older_ones(cluster):
    client = APIClient()

    def post(priority, pages=1):
        body = {
            "file": SimpleUploadedFile("doc.pdf", factories.slow_pdf(pages)),
            "request": json.dumps({"dpi": 600, "text_layer": "ocr", "priority": priority}),
        }
        response = client.post("/v1/ocr/process-pdf", body, format="multipart")
        assert response.status_code == 202, response.content
        return response.json()["task_id"]

    busy = [post("normal", pages=3) for _ in range(2)]
    wait_for(lambda: OCRTask.objects.filter(pk__in=busy, status="processing").count() == 2, timeout=30)
    low, high = post("low"), post("high")
    assert client.get(f"/v1/ocr/tasks/{high}").json()["queue_position"] == 1
    client.post("/v1/ocr/tasks/cancel", {"task_ids": busy}, format="json")
    wait_for(lambda: OCRTask.objects.filter(pk__in=[low, high], status="processing").exists(), timeout=30)
    wait_for(lambda: OCRTask.objects.get(pk=high).started_at is not None, timeout=30)
    started_low = OCRTask.objects.get(pk=low).started_at
    assert started_low is None or started_low >= OCRTask.objects.get(pk=high).started_at
    client.post("/v1/ocr/tasks/cancel", {"task_ids": [low, high]}, format="json")
