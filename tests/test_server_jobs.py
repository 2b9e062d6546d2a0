"""Video jobs: the store contract on SQLite and on a real Redis, and the HTTP API end to end
(real uvicorn, the tiny-random model, ffprobe on the MP4s), restarts included."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from clients.protocol import ErrorDetail, VideoJob
from server.jobs import SQLiteJobStore, new_job_id
from server.jobs_redis import RedisJobStore
from tests.server_fixtures import ffprobe, live_server, redis_url, server, tiny_model  # noqa: F401


def make_job(prompt: str = "a cat", **fields) -> VideoJob:
    values = dict(id=new_job_id(), status="queued", created_at=int(time.time()), model="tiny-random",
                  prompt=prompt, seconds=1.0, seed=7, size="64x64", fps=16.0)
    values.update(fields)
    return VideoJob(**values)


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request, tmp_path):
    """Opens stores on one shared backing (the same file / the same Redis keys): a second
    call is a restarted server or another replica."""
    opened = []
    if request.param == "sqlite":
        def factory(**kw):
            opened.append(SQLiteJobStore(tmp_path / "jobs.sqlite3"))
            return opened[-1]
    else:
        url, prefix = request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex[:8]}:"

        def factory(lease_s: int = 60):
            opened.append(RedisJobStore(url, prefix=prefix, lease_s=lease_s))
            return opened[-1]
    factory.kind = request.param
    yield factory
    for store in opened:
        store.close()


def test_store_create_get_list_and_pages(store_factory):
    store = store_factory()
    jobs = [make_job(f"prompt {i}") for i in range(5)]
    for job in jobs:
        store.create(job)
    assert store.get(jobs[2].id) == jobs[2]
    assert store.get("video_missing") is None
    newest = store.list(limit=2)
    assert [j.id for j in newest] == [jobs[4].id, jobs[3].id]
    assert [j.id for j in store.list(limit=2, after=newest[-1].id)] == [jobs[2].id, jobs[1].id]
    assert [j.id for j in store.list(limit=10, order="asc")] == [j.id for j in jobs]
    assert store.list(after="video_missing") == []
    assert store.counts() == {"queued": 5}


def test_store_counts_pending_jobs_per_owner(store_factory):
    """What the job queue caps count: queued and running jobs, in all and per owner."""
    store = store_factory()
    mine = [make_job(f"mine {i}") for i in range(3)]
    for job in mine:
        store.create(job, owner="key:a")
    store.create(make_job("theirs"), owner="key:b")
    store.create(make_job("nobody's"))
    assert store.pending("key:a") == (5, 3) and store.pending(None) == (5, 0)
    claimed = store.claim("w", 1)  # in progress still counts
    assert store.pending("key:a") == (5, 3)
    store.complete(claimed.id, b"mp4")
    store.delete(mine[2].id)
    assert store.pending("key:a") == (3, 1) and store.pending("key:b") == (3, 1)


def test_store_claims_oldest_first_and_each_job_once(store_factory):
    store, replica = store_factory(), store_factory()
    jobs = [make_job(f"p{i}") for i in range(6)]
    for job in jobs:
        store.create(job)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(s):
        while (job := s.claim("w", timeout=0.2)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (store, replica, store, replica)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(j.id for j in jobs) and len(claimed) == len(set(claimed))
    assert store.counts() == {"in_progress": 6}


def test_store_claim_order_and_wait(store_factory):
    store = store_factory()
    assert store.claim("w", timeout=0.1) is None  # nothing queued: waits, then gives up
    first, second = make_job("first"), make_job("second")
    store.create(first)
    store.create(second)
    assert store.claim("w", timeout=1).id == first.id


def test_store_progress_complete_fail_delete(store_factory):
    store = store_factory()
    done, bad = make_job("done"), make_job("bad")
    store.create(done)
    store.create(bad)
    store.claim("w", 1)
    store.claim("w", 1)
    assert store.set_progress(done.id, 40).progress == 40
    completed = store.complete(done.id, b"mp4 bytes")
    assert completed.status == "completed" and completed.progress == 100 and completed.completed_at
    assert store.content(done.id) == b"mp4 bytes"
    failed = store.fail(bad.id, ErrorDetail(code="invalid_prompt", message="no"))
    assert failed.status == "failed" and failed.error.code == "invalid_prompt"
    assert store.counts() == {"completed": 1, "failed": 1}
    assert store.delete(done.id).id == done.id
    assert store.get(done.id) is None and store.content(done.id) is None
    assert store.delete(done.id) is None
    assert store.set_progress(done.id, 50) is None  # a deleted job cannot be brought back
    assert store.complete(done.id, b"late") is None and store.content(done.id) is None
    assert store.counts() == {"failed": 1}


def test_store_requeues_jobs_left_in_progress_after_a_restart(store_factory):
    store = store_factory(lease_s=1) if store_factory.kind == "redis" else store_factory()
    job, other = make_job("crashed"), make_job("next")
    store.create(job)
    store.create(other)
    assert store.claim("dead-worker", 1).id == job.id
    store.set_progress(job.id, 30)
    store.close()  # the server dies without re-queueing

    restarted = store_factory(lease_s=1) if store_factory.kind == "redis" else store_factory()
    if store_factory.kind == "redis":
        assert restarted.recover() == 0  # its lease is still live: another replica may own it
        time.sleep(1.3)
    assert restarted.recover() == 1
    back = restarted.get(job.id)
    assert back.status == "queued" and back.progress == 0
    assert restarted.claim("w", 1).id == job.id  # a re-queued job goes first
    assert restarted.claim("w", 1).id == other.id


# --- HTTP end to end ---------------------------------------------------------------------------

def wait_for(http, job_id: str, statuses: set[str], timeout: float = 120.0) -> tuple[dict, list[int]]:
    seen_progress, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/videos/{job_id}").json()
        seen_progress.append(job["progress"])
        if job["status"] in statuses:
            return job, seen_progress
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def test_video_job_end_to_end(server, tmp_path):
    with server.client() as http:
        r = http.post("/v1/videos", json={"prompt": "a red ball", "seconds": 3, "seed": 5})
        assert r.status_code == 202
        created = VideoJob.model_validate(r.json())
        assert created.status == "queued" and created.seed == 5 and created.size == "64x64"
        job, progress = wait_for(http, created.id, {"completed", "failed"})
        assert job["status"] == "completed" and job["progress"] == 100 and job["completed_at"]
        assert progress == sorted(progress)  # progress never goes back
        content = http.get(f"/v1/videos/{created.id}/content")
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
        path = tmp_path / "clip.mp4"
        path.write_bytes(content.content)
        facts = ffprobe(path)
        assert facts["codec_name"] == "h264" and int(facts["nb_read_frames"]) == 48  # 3 s x 16 fps
        assert "mp4" in facts["format_name"]

        listed = http.get("/v1/videos").json()["data"]
        assert listed[0]["id"] == created.id
        assert http.delete(f"/v1/videos/{created.id}").json() == {"id": created.id, "object": "video.deleted",
                                                                  "deleted": True}
        assert http.get(f"/v1/videos/{created.id}").status_code == 404
        assert http.get(f"/v1/videos/{created.id}/content").status_code == 404


def test_lower_fps_clip_and_server_chosen_seed(server, tmp_path):
    with server.client() as http:
        created = http.post("/v1/videos", json={"prompt": "waves", "seconds": 2, "fps": 8}).json()
        assert isinstance(created["seed"], int)  # recorded, so the clip can be made again
        wait_for(http, created["id"], {"completed"})
        path = tmp_path / "eight.mp4"
        path.write_bytes(http.get(f"/v1/videos/{created['id']}/content").content)
    facts = ffprobe(path)
    assert int(facts["nb_read_frames"]) == 16 and facts["avg_frame_rate"] == "8/1"


def test_content_of_an_unfinished_job_is_a_409(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model, job_workers=0) as idle, idle.client() as http:
        job = http.post("/v1/videos", json={"prompt": "later"}).json()
        r = http.get(f"/v1/videos/{job['id']}/content")
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        metrics = http.get("/metrics").text
        assert 'framecast_jobs{status="queued"} 1.0' in metrics


def test_deleting_a_running_job_stops_it(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model) as running, running.client() as http:
        job = http.post("/v1/videos", json={"prompt": "long", "seconds": 30}).json()
        wait_for(http, job["id"], {"in_progress"})
        assert http.delete(f"/v1/videos/{job['id']}").status_code == 200
        # The worker notices at its next chunk and takes the next job.
        quick = http.post("/v1/videos", json={"prompt": "quick", "seconds": 0.5}).json()
        wait_for(http, quick["id"], {"completed"}, timeout=30)
        assert not (tmp_path / "videos" / f"{job['id']}.mp4").exists()
        assert [j["id"] for j in http.get("/v1/videos").json()["data"]] == [quick["id"]]


def test_jobs_survive_a_restart(tiny_model, tmp_path):
    """Stop a server with a job in progress (no grace): the next server re-queues and
    finishes it, and what was completed before is still downloadable."""
    with live_server(tmp_path, tiny_model, shutdown_grace_s=0) as first, first.client() as http:
        done = http.post("/v1/videos", json={"prompt": "before", "seconds": 1}).json()
        wait_for(http, done["id"], {"completed"})
        long = http.post("/v1/videos", json={"prompt": "interrupted", "seconds": 20}).json()
        wait_for(http, long["id"], {"in_progress"})
    assert SQLiteJobStore(tmp_path / "jobs.sqlite3").get(long["id"]).status == "queued"
    with live_server(tmp_path, tiny_model) as second, second.client() as http:
        assert http.get(f"/v1/videos/{done['id']}/content").status_code == 200
        job, _ = wait_for(http, long["id"], {"completed", "failed"})
        assert job["status"] == "completed"


def test_shutdown_lets_a_running_job_finish_within_grace(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model, shutdown_grace_s=60) as server_, server_.client() as http:
        job = http.post("/v1/videos", json={"prompt": "finish me", "seconds": 2}).json()
        wait_for(http, job["id"], {"in_progress"})
    assert SQLiteJobStore(tmp_path / "jobs.sqlite3").get(job["id"]).status == "completed"


def test_jobs_on_redis_end_to_end(tiny_model, tmp_path, redis_url):
    with live_server(tmp_path, tiny_model, job_store_url=redis_url) as on_redis, on_redis.client() as http:
        job = http.post("/v1/videos", json={"prompt": "shared", "seconds": 1}).json()
        done, _ = wait_for(http, job["id"], {"completed", "failed"})
        assert done["status"] == "completed"
        path = tmp_path / "redis.mp4"
        path.write_bytes(http.get(f"/v1/videos/{job['id']}/content").content)
        assert int(ffprobe(path)["nb_read_frames"]) == 16
        assert 'framecast_jobs{status="completed"} 1.0' in http.get("/metrics").text
    assert not (tmp_path / "jobs.sqlite3").exists()  # nothing went to the SQLite default
