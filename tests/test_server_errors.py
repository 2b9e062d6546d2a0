"""Bad input gets a clear error and loses nothing: each case is an `error` message and a
close code on the WebSocket, or a 4xx {"error": {...}} body over HTTP; the server keeps
serving afterwards."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from clients.protocol import MAX_MESSAGE_BYTES, CloseCode, ErrorBody
from tests.server_fixtures import live_server, one_session, receive_all, run, server, tiny_model  # noqa: F401

START = {"type": "session.start", "prompt": "a red ball", "seed": 1, "max_seconds": 0.5}

BAD_STARTS = [
    # (what is sent first, expected error code, expected close code)
    ("{not json", "invalid_json", CloseCode.BAD_REQUEST),
    ("[1, 2]", "invalid_message", CloseCode.BAD_REQUEST),
    ({"prompt": "no type"}, "invalid_message", CloseCode.BAD_REQUEST),
    ({"type": "session.dance"}, "unknown_message_type", CloseCode.BAD_REQUEST),
    ({"type": "session.start"}, "invalid_prompt", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": ""}, "invalid_prompt", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "   "}, "invalid_prompt", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x" * 1001}, "invalid_prompt", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "seed": -1}, "invalid_seed", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "seed": "seven"}, "invalid_seed", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "seed": 2**64}, "invalid_seed", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "format": "gif"}, "invalid_message", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "fps": 30}, "invalid_request", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "fps": 0}, "invalid_message", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "max_seconds": 10**6}, "invalid_request", CloseCode.BAD_REQUEST),
    ({"type": "session.start", "prompt": "x", "model": "wan-14b"}, "unknown_model", CloseCode.NOT_FOUND),
    ({"type": "session.start", "prompt": "x", "colour": "red"}, "invalid_message", CloseCode.BAD_REQUEST),
    ({"type": "session.update", "prompt": "x"}, "not_started", CloseCode.BAD_REQUEST),
    (b"\x00\x01binary", "binary_not_allowed", CloseCode.UNSUPPORTED_DATA),
    ("x" * (MAX_MESSAGE_BYTES + 1), "message_too_large", CloseCode.TOO_BIG),
]


@pytest.mark.parametrize("first, code, close", BAD_STARTS,
                         ids=[f"{i}-{c}" for i, (_, c, _) in enumerate(BAD_STARTS)])
def test_bad_first_message_is_refused_with_error_and_close(server, first, code, close):
    got = run(one_session(server.ws_url, first))
    assert got.error is not None and got.error["code"] == code, got.messages
    assert got.error["message"]
    assert got.close_code == close
    assert not got.media and not got.of_type("session.started")


async def _bad_after_start(url: str, bad) -> tuple:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "max_seconds": 30}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 2)
        await ws.send(bad if isinstance(bad, (str, bytes)) else json.dumps(bad))
        return await receive_all(ws, got)


@pytest.mark.parametrize("bad, code, close", [
    ({**START}, "already_started", CloseCode.BAD_REQUEST),
    ("{oops", "invalid_json", CloseCode.BAD_REQUEST),
    (b"\xff", "binary_not_allowed", CloseCode.UNSUPPORTED_DATA),
    ({"type": "session.update", "prompt": ""}, "invalid_prompt", CloseCode.BAD_REQUEST),
    ({"type": "session.update", "prompt": "x", "event_id": ""}, "invalid_message", CloseCode.BAD_REQUEST),
    ({"type": "session.fly"}, "unknown_message_type", CloseCode.BAD_REQUEST),
])
def test_bad_message_mid_stream_ends_that_stream_cleanly(server, bad, code, close):
    got = run(_bad_after_start(server.ws_url, bad))
    assert got.error["code"] == code
    assert got.close_code == close
    # The media that arrived before the error is whole: every chunk had its binary.
    assert all(len(data) == meta["bytes"] for meta, data in got.media)


def test_a_frame_beyond_the_websocket_limit_is_closed_with_too_big(server):
    """Past ws_max_frame_bytes the WebSocket layer itself refuses the frame (no JSON error:
    it never reaches the app), still with the proper close code."""
    got = run(one_session(server.ws_url, "x" * (server.settings.ws_max_frame_bytes + 1)))
    assert got.close_code == CloseCode.TOO_BIG


def test_no_start_within_the_timeout(server):
    async def idle() -> tuple:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(json.dumps({"type": "session.ping", "ts": 1.0}))  # pings do not count as a start
            return await receive_all(ws, timeout=server.settings.start_timeout_s + 10)

    got = run(idle())
    assert got.of_type("session.pong")
    assert got.error["code"] == "start_timeout"
    assert got.close_code == CloseCode.START_TIMEOUT


def test_server_still_streams_after_bad_clients(server):
    got = run(one_session(server.ws_url, START))
    assert got.of_type("session.done")[0]["frames"] == 8
    assert server.state.admission.in_use == 0


def test_the_slot_is_free_by_the_time_the_client_reads_session_done(server, monkeypatch):
    """The engine lets go of a stream on a worker thread; the goodbye waits for it, so that a
    client that reconnects at once finds its slot free. Here the engine takes 0.3 s to let go."""
    import threading
    import time
    from concurrent.futures import Future

    real = server.state.streams.close

    def slow_close(handle) -> Future:
        done: Future = Future()

        def later() -> None:
            time.sleep(0.3)
            real(handle).add_done_callback(lambda _: done.set_result(None))

        threading.Thread(target=later, daemon=True).start()
        return done

    monkeypatch.setattr(server.state.streams, "close", slow_close)
    got = run(one_session(server.ws_url, START))
    assert got.of_type("session.done")[0]["frames"] == 8
    assert server.state.admission.in_use == 0


# --- capacity and keys ---------------------------------------------------------------------

async def _second_while_first_runs(url: str, headers=None, second_url: str | None = None):
    async with websockets.connect(url, additional_headers=headers) as first:
        await first.send(json.dumps({**START, "max_seconds": 60}))
        await receive_all(first, until=lambda r: len(r.media) >= 1)
        return await one_session(second_url or url, START, headers=headers)


def test_memory_budget_refuses_with_server_full(tiny_model, tmp_path):
    budget = tiny_model.weights_bytes() + tiny_model.session_memory_bytes()  # room for one stream
    with live_server(tmp_path, tiny_model, memory_budget_bytes=budget, job_workers=0) as small:
        got = run(_second_while_first_runs(small.ws_url))
        assert got.error["code"] == "server_full"
        assert got.close_code == CloseCode.TRY_AGAIN_LATER
        # The first stream has ended: there is room again.
        assert run(one_session(small.ws_url, START)).of_type("session.done")


def test_api_keys_on_websocket_and_http(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model, api_keys=["k-one", "k-two"], sessions_per_key=1) as guarded:
        for query, headers in [("", None), ("?api_key=wrong", None), ("", {"Authorization": "Bearer wrong"})]:
            got = run(one_session(guarded.ws_url + query, START, headers=headers))
            assert got.error["code"] == "unauthorized" and got.close_code == CloseCode.UNAUTHORIZED
        by_header = run(one_session(guarded.ws_url, START, headers={"Authorization": "Bearer k-one"}))
        assert by_header.of_type("session.done")
        by_query = run(one_session(guarded.ws_url + "?api_key=k-two", START))
        assert by_query.of_type("session.done")

        # One stream per key: a second one with the same key is refused, another key is not.
        same = run(_second_while_first_runs(guarded.ws_url + "?api_key=k-one"))
        assert same.error["code"] == "rate_limited" and same.close_code == CloseCode.TRY_AGAIN_LATER
        other = run(_second_while_first_runs(guarded.ws_url + "?api_key=k-one",
                                             second_url=guarded.ws_url + "?api_key=k-two"))
        assert other.of_type("session.done")

        with guarded.client() as http:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}]:
                r = http.get("/v1/models", headers=headers)
                assert r.status_code == 401 and ErrorBody.model_validate(r.json()).error.code == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
            assert http.get("/v1/models", headers={"Authorization": "Bearer k-two"}).status_code == 200
            assert http.get("/healthz").status_code == 200  # probes need no key


# --- HTTP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, code, param", [
    (b"{not json", 400, "invalid_json", None),
    ({}, 400, "invalid_prompt", "prompt"),
    ({"prompt": ""}, 400, "invalid_prompt", "prompt"),
    ({"prompt": "  "}, 400, "invalid_prompt", "prompt"),
    ({"prompt": "x", "seconds": -1}, 400, "invalid_request", "seconds"),
    ({"prompt": "x", "seconds": 599}, 400, "invalid_request", "seconds"),  # above the server's limit
    ({"prompt": "x", "seed": -5}, 400, "invalid_seed", "seed"),
    ({"prompt": "x", "size": "1920x1080"}, 400, "invalid_request", "size"),
    ({"prompt": "x", "size": "big"}, 400, "invalid_request", "size"),
    ({"prompt": "x", "fps": 60}, 400, "invalid_request", "fps"),
    ({"prompt": "x", "fps": 1e-300}, 400, "invalid_request", "fps"),
    ({"prompt": "x", "model": "nope"}, 400, "unknown_model", "model"),
    ({"prompt": "x", "extra": 1}, 400, "invalid_request", "extra"),
])
def test_bad_video_requests_get_4xx_error_bodies(server, body, status, code, param):
    with server.client() as http:
        before = len(http.get("/v1/videos", params={"limit": 100}).json()["data"])
        if isinstance(body, bytes):
            r = http.post("/v1/videos", content=body, headers={"content-type": "application/json"})
        else:
            r = http.post("/v1/videos", json=body)
        assert r.status_code == status, r.text
        error = ErrorBody.model_validate(r.json()).error
        assert (error.code, error.param) == (code, param) and error.message
        assert len(http.get("/v1/videos", params={"limit": 100}).json()["data"]) == before  # nothing created


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v1/videos/video_missing", 404, "not_found"),
    ("GET", "/v1/videos/video_missing/content", 404, "not_found"),
    ("DELETE", "/v1/videos/video_missing", 404, "not_found"),
    ("GET", "/v1/videos/bad%20id!", 400, "invalid_request"),
    ("GET", "/v1/videos?limit=0", 400, "invalid_request"),
    ("GET", "/v1/videos?order=sideways", 400, "invalid_request"),
    ("GET", "/v1/videos?limt=5", 400, "invalid_request"),
    ("GET", "/v1/videos?limit=5&limit=6", 400, "invalid_request"),
    ("GET", "/v1/nothing-here", 404, "not_found"),
    ("PUT", "/v1/models", 405, "method_not_allowed"),
])
def test_http_errors_share_one_shape(server, method, path, status, code):
    r = httpx.request(method, server.url + path)
    assert r.status_code == status
    assert ErrorBody.model_validate(r.json()).error.code == code


def test_not_ready_answers_503_model_loading(tmp_path):
    """Before the lifespan has loaded the model, routes answer 503 in the error shape."""
    from server.app import create_app
    from tests.server_fixtures import server_settings

    app = create_app(server_settings(tmp_path))  # lifespan not run: nothing loaded

    async def probe():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/readyz"), await http.get("/healthz")

    ready, health = asyncio.run(probe())
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_loading"
    assert health.status_code == 200


def test_a_memory_budget_that_holds_no_session_fails_readiness(tiny_model, tmp_path):
    from server.errors import ApiError
    from server.state import ServerState
    from tests.server_fixtures import server_settings

    state = ServerState(server_settings(tmp_path, memory_budget_bytes=4096), tiny_model)
    state.open_jobs()
    asyncio.run(state.load())
    assert "holds no session" in state.load_error
    with pytest.raises(ApiError) as refused:
        state.require_ready()
    assert refused.value.code == "internal_error" and "holds no session" in refused.value.message
    state.shutdown()
