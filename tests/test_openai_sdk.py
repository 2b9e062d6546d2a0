"""OpenAI's own Python SDK (`openai`, a client no one here wrote) against a real server on
loopback: every Videos call a user of it makes. The SDK sends multipart/form-data with
`seconds` as a string ("4"), reads the job as its `Video` type, pages the list by cursor and
downloads by variant."""

from __future__ import annotations

import io
import warnings

import pytest

from tests.server_fixtures import ffprobe, live_server, server, tiny_model  # noqa: F401

openai = pytest.importorskip("openai", reason="the openai package is a test dependency (pip install -e '.[test]')")

# The SDK marks the Videos API deprecated on OpenAI's own service; the calls are what we test.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "sdk-key-0123456789"


@pytest.fixture(scope="module")
def keyed(tiny_model, tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("sdk"), tiny_model, api_keys=[KEY]) as running:
        yield running


@pytest.fixture
def client(keyed):
    # No retries: a refusal must show up as the error it is, at once.
    return openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)


def test_create_retrieve_poll_and_download(client, tmp_path):
    video = client.videos.create(prompt="a red ball bouncing on a blue background", seconds="1")
    assert isinstance(video, openai.types.Video)
    assert (video.object, video.status, video.seconds, video.size, video.model) == \
        ("video", "queued", "1", "64x64", "tiny-random")
    assert video.id.startswith("video_") and video.created_at > 0 and video.progress == 0
    assert client.videos.retrieve(video.id).id == video.id

    done = client.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    assert done.error is None

    path = tmp_path / "clip.mp4"
    client.videos.download_content(video.id, variant="video").write_to_file(path)
    facts = ffprobe(path)
    assert facts["codec_name"] == "h264" and int(facts["nb_read_frames"]) == 16  # 1 s at 16 fps
    assert client.videos.download_content(video.id).content == path.read_bytes()  # video is the default

    from PIL import Image

    thumbnail = client.videos.download_content(video.id, variant="thumbnail").content
    image = Image.open(io.BytesIO(thumbnail))
    assert image.format == "JPEG" and image.size == (64, 64)


def test_create_and_poll_then_delete(client):
    video = client.videos.create_and_poll(prompt="a blue square moving up", seconds="1", size="64x64",
                                          model="tiny-random", poll_interval_ms=100)
    assert video.status == "completed"
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_list_pages_by_cursor(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model, job_workers=0) as idle:
        client = openai.OpenAI(base_url=idle.url + "/v1", api_key="none", max_retries=0)
        ids = [client.videos.create(prompt=f"clip {i}", seconds="1").id for i in range(5)]
        first = client.videos.list(limit=2)
        assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more and first.last_id == ids[3]
        assert [v.id for v in client.videos.list(limit=2, order="asc")] == ids  # auto-pagination
        assert [v.id for v in client.videos.list(limit=2, after=ids[2]).data] == [ids[1], ids[0]]
        assert not client.videos.list(limit=10).has_more


@pytest.mark.parametrize("call, param", [
    (lambda c, ref: c.videos.create(prompt="a red ball", seconds="1", input_reference=ref), "input_reference"),
    (lambda c, ref: c.videos.create(prompt="a red ball", seconds="1e-9"), "seconds"),
    (lambda c, ref: c.videos.create(prompt="a red ball", seconds="1", size="1280x720"), "size"),
    (lambda c, ref: c.videos.create(prompt="a red ball", seconds="1", model="sora-2"), "model"),
    (lambda c, ref: c.videos.create(prompt="", seconds="1"), "prompt"),
])
def test_refusals_name_the_field(client, call, param):
    reference = ("first.png", io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "image/png")
    with pytest.raises(openai.BadRequestError) as refused:
        call(client, reference)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param
    assert refused.value.body["message"]


def test_unknown_variant_is_a_400(client):
    video = client.videos.create_and_poll(prompt="a red ball", seconds="1", poll_interval_ms=100)
    for variant in ("spritesheet", "gif"):
        with warnings.catch_warnings(), pytest.raises(openai.BadRequestError) as refused:
            client.videos.download_content(video.id, variant=variant)
        assert refused.value.body["param"] == "variant"


def test_wrong_key_is_an_authentication_error(keyed):
    stranger = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.videos.create(prompt="a red ball", seconds="1")
    with pytest.raises(openai.AuthenticationError):
        stranger.videos.list()


def test_a_full_queue_is_a_rate_limit_with_retry_after(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model, job_workers=0, max_pending_jobs=1) as idle:
        client = openai.OpenAI(base_url=idle.url + "/v1", api_key="none", max_retries=0)
        client.videos.create(prompt="first", seconds="1")
        with pytest.raises(openai.RateLimitError) as refused:
            client.videos.create(prompt="second", seconds="1")
        assert int(refused.value.response.headers["retry-after"]) >= 1
