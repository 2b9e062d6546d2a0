// Framecast browser viewer. Plain JS modules, no build step: the server serves this folder at /.
//
// Speaks the wire protocol of clients/protocol.py over one of two transports:
// - WebRTC (webrtc.js, the default where the browser has RTCPeerConnection): the frames on
//   a video track, the JSON control messages on a data channel;
// - WebSocket /v1/realtime/video: JSON text messages for control, and for media a
//   `video.chunk` JSON followed by one binary message. fMP4 (an init segment, then one
//   fragment per piece of a chunk sent) plays through Media Source Extensions; JPEG frames (one per
//   message) are drawn on a canvas (sinks.js).
// window.framecastStats is read by the browser test and the glass-to-glass benchmark.

import { fragmentInfo } from "./mp4.js";
import { Fmp4Sink, JpegSink } from "./sinks.js";
import { WebRtcSink, openWebRtc, webrtcSupported } from "./webrtc.js";

const REALTIME_PATH = "/v1/realtime/video";
// clients/protocol.py SUBPROTOCOL and api_key_subprotocol: a browser cannot set headers on a
// WebSocket, and a key in its URL would end up in access logs and history.
const SUBPROTOCOL = "framecast.v1";
const API_KEY_SUBPROTOCOL_PREFIX = "framecast.key.";
const PROBE_CODEC = 'video/mp4; codecs="avc1.42E01E"';  // H.264 baseline, what libx264 baseline gives
const RECORD_MAX_BYTES = 512 * 1024 * 1024;
const PAINT_LOG_MAX = 8192;  // painted frames kept for the benchmark's frame intervals

const $ = (id) => document.getElementById(id);
const ui = {
  video: $("video"), canvas: $("canvas"), prompt: $("prompt"), start: $("start"), stop: $("stop"),
  switch: $("switch"), record: $("record"), format: $("format"), seed: $("seed"), apiKey: $("api-key"),
  status: $("status"), message: $("message"), fps: $("fps"), latency: $("latency"),
  firstFrame: $("first-frame"), frames: $("frames"), formatBadge: $("format-badge"), readAs: $("read-as"),
};

// ---------------------------------------------------------------- stats (test hooks)
function freshStats() {
  return {
    state: "idle",             // idle | connecting | live | done | closed | error
    format: null, transport: null, codec: null, serverCodec: null, fallbackReason: null, sessionId: null,
    width: 0, height: 0, fps: 0,
    mseSupported: typeof MediaSource !== "undefined" && MediaSource.isTypeSupported(PROBE_CODEC),
    webrtcSupported,
    connectStartedAt: null,    // start(): connecting (WebRTC: OPTIONS, offer, POST, ICE, DTLS) until startSentAt
    startSentAt: null, firstChunkAt: null, firstFrameAt: null, firstFrameLatencyMs: null,
    chunksReceived: 0, framesReceived: 0, bytesReceived: 0, framesPainted: 0, framesDropped: 0,
    liveEdgeJumps: 0, serverLatencyMs: null, paintFps: 0,
    bufferMs: null,            // webrtc: the jitter buffer's mean delay; fmp4: media buffered ahead of the playhead
    paints: [],                // [performance.now(), frames] per painted frame callback (the last PAINT_LOG_MAX)
    promptSwitches: [],        // {event_id, prompt, sentAt, queuedAt, atFrame, firstChunkIndex, firstChunkAt, firstFrameAt, latencyMs}
    lastPromptSwitchFirstFrameAt: null, lastPromptSwitchLatencyMs: null,
    recordedBytes: 0, errors: [], closeCode: null, doneReason: null,
    readAs: null,              // what the model reads for the prompt when it rewrites it (session.started, update.queued)
  };
}
let stats = window.framecastStats = freshStats();

// ---------------------------------------------------------------- session state
let conn = null;        // the control connection: {transport, send, isOpen, close, detach}
let media = null;       // the WebRTC, fMP4 or JPEG sink of the current session
let pendingMeta = null; // the video.chunk whose binary message comes next
let currentEventId = null;
let recording = null;
let userStopped = false;
let fallbackTried = false;
let lastStartOptions = {};

function setStatus(text, cls = "") {
  ui.status.textContent = text;
  ui.status.className = "status " + cls;
}

// A model that rewrites prompts (the Shapes default) says what it reads: show it under the prompt.
function showReadAs(readAs) {
  stats.readAs = readAs ?? null;
  ui.readAs.textContent = readAs ? `read as: ${readAs}` : "";
  ui.readAs.hidden = !readAs;
}

function showMessage(text, info = false) {
  ui.message.textContent = text || "";
  ui.message.className = "message" + (info ? " info" : "");
}

function setLive(live) {
  ui.start.disabled = live;
  ui.stop.disabled = !live;
  ui.switch.disabled = !live;
  ui.record.disabled = !live;
}

function chooseFormat(requested) {
  if (requested === "webrtc" && webrtcSupported) return requested;
  if (requested === "fmp4" || requested === "jpeg") return requested;
  return webrtcSupported ? "webrtc" : stats.mseSupported ? "fmp4" : "jpeg";
}

// The WebSocket, in the shape webrtc.js gives a peer connection.
function openWebSocket(apiKey, handlers) {
  const socket = new WebSocket(realtimeUrl(), keySubprotocols(apiKey));
  socket.binaryType = "arraybuffer";
  let attached = true;
  socket.onopen = () => attached && handlers.open();
  socket.onmessage = (event) => {
    if (!attached) return;
    if (typeof event.data === "string") handlers.message(event.data);
    else handlers.media(event.data);
  };
  socket.onclose = (event) => attached && handlers.close({ code: event.code, reason: event.reason });
  return {
    transport: "websocket",
    send: (text) => socket.send(text),
    isOpen: () => socket.readyState === WebSocket.OPEN,
    close: () => socket.close(),
    detach: () => { attached = false; socket.close(); },
  };
}

function realtimeUrl() {
  const url = new URL(REALTIME_PATH, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.toString();
}

function keySubprotocols(apiKey) {
  if (!apiKey) return undefined;
  // base64url without padding: any key becomes a valid header token.
  const bytes = new TextEncoder().encode(apiKey);
  const b64 = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return [SUBPROTOCOL, API_KEY_SUBPROTOCOL_PREFIX + b64];
}

function start(options = {}) {
  stopSession(false);
  media?.dispose();
  lastStartOptions = options;
  const prompt = (options.prompt ?? ui.prompt.value).trim();
  if (!prompt) { showMessage("Type a prompt first."); return; }
  const format = chooseFormat(options.format ?? ui.format.value);
  const keep = { mseSupported: stats.mseSupported, fallbackReason: options.fallbackReason ?? null };
  stats = window.framecastStats = Object.assign(freshStats(), keep, {
    state: "connecting", format, transport: format === "webrtc" ? "webrtc" : "websocket",
    connectStartedAt: performance.now() });
  fallbackTried = !!options.fallbackReason;
  userStopped = false;
  currentEventId = null;
  pendingMeta = null;
  showMessage(keep.fallbackReason ? `Using ${format === "jpeg" ? "JPEG" : "fMP4"}: ${keep.fallbackReason}` : "", true);
  setStatus("connecting…");
  ui.formatBadge.textContent = format === "webrtc" ? "webrtc" : `websocket · ${format}`;
  const seedText = options.seed ?? ui.seed.value;
  const message = { type: "session.start", prompt, format };
  if (seedText !== "" && seedText !== undefined && seedText !== null) message.seed = Number(seedText);
  if (options.maxSeconds) message.max_seconds = Number(options.maxSeconds);

  const host = { stats, painted: framePainted, fallback: fallBackToJpeg, fragment: recordFragment };
  media = new ({ webrtc: WebRtcSink, fmp4: Fmp4Sink, jpeg: JpegSink }[format])(ui.video, ui.canvas, host);
  const apiKey = options.apiKey ?? ui.apiKey.value;
  const handlers = {
    open: () => {
      stats.startSentAt = performance.now();
      conn.send(JSON.stringify(message));
    },
    message: (text) => onControl(JSON.parse(text)),
    media: onMedia,
    close: onClose,
    error: (detail) => { stats.errors.push(detail); showMessage(`${detail.code}: ${detail.message}`); },
  };
  conn = format === "webrtc" ? openWebRtc(apiKey, ui.video, media, handlers) : openWebSocket(apiKey, handlers);
  setLive(true);
}

function onControl(msg) {
  switch (msg.type) {
    case "session.started":
      Object.assign(stats, { sessionId: msg.session_id, width: msg.width, height: msg.height, fps: msg.fps,
                             serverCodec: msg.codec ?? null, state: "live" });
      if (stats.transport === "webrtc") {
        stats.codec = msg.codec;
        ui.formatBadge.textContent = `webrtc · ${(msg.codec || "").replace("video/", "")}`;
      }
      setStatus(`live · ${msg.model} · ${msg.width}×${msg.height} @ ${msg.fps} fps`, "live");
      showReadAs(msg.read_as);
      break;
    case "video.chunk":
      if (stats.transport === "webrtc") onChunk(msg, 0);  // nothing follows: its frames are on the track
      else pendingMeta = msg;
      break;
    case "session.update.queued": {
      const sw = stats.promptSwitches.find((s) => s.event_id === msg.event_id);
      if (sw) { sw.queuedAt = performance.now(); sw.atFrame = msg.at_frame ?? null; }
      showReadAs(msg.read_as);
      break;
    }
    case "session.stats":
      stats.serverLatencyMs = msg.latency_ms;
      break;
    case "session.done":
      stats.doneReason = msg.reason;
      stats.state = "done";
      setStatus(`done (${msg.reason}) · ${msg.frames} frames`);
      media?.end();
      if (conn?.transport === "webrtc") conn.close();  // the server waits for us to hang up
      break;
    case "error":
      stats.errors.push(msg.error);
      showMessage(`${msg.error.code}: ${msg.error.message}`);
      break;
    default:  // session.paused / resumed / pong: nothing to show
      break;
  }
}

function onMedia(buffer) {
  const meta = pendingMeta;
  pendingMeta = null;
  if (!meta) { stats.errors.push({ code: "protocol", message: "binary message without video.chunk" }); return; }
  onChunk(meta, buffer.byteLength, buffer);
}

function onChunk(meta, bytes, buffer = null) {
  stats.chunksReceived += 1;
  stats.framesReceived += meta.frames;
  stats.bytesReceived += bytes;
  if (meta.frames > 0 && stats.firstChunkAt === null) stats.firstChunkAt = performance.now();
  if (meta.prompt_event_id && meta.prompt_event_id !== currentEventId) {
    currentEventId = meta.prompt_event_id;  // carried forward: later chunks may not repeat it
    const sw = stats.promptSwitches.find((s) => s.event_id === currentEventId);
    if (sw && sw.firstChunkIndex === undefined) {
      sw.firstChunkIndex = meta.index; sw.firstFrame = meta.frame; sw.firstChunkAt = performance.now();
    }
  }
  media.push(meta, buffer, currentEventId);
}

function onClose(event) {
  stats.closeCode = event.code;
  const ended = userStopped || stats.state === "done";
  if (!ended && stats.transport === "webrtc" && stats.state === "connecting" && !stats.errors.some(isRefusal)) {
    // WebRTC could not connect (no UDP path, a server without it): the WebSocket can.
    const last = stats.errors[stats.errors.length - 1];
    fallBack(last ? last.message : closeReason(event), stats.mseSupported ? "fmp4" : "jpeg");
    return;
  }
  if (!ended) {
    stats.state = stats.errors.length ? "error" : "closed";
    const last = stats.errors[stats.errors.length - 1];
    const why = last ? last.message : closeReason(event);
    showMessage(why);
    setStatus("disconnected", "error");
  } else if (stats.state !== "done") {
    stats.state = "closed";
    setStatus("stopped");
  }
  media?.end();
  finishRecording();
  setLive(false);
  conn = null;
}

// Refusals the WebSocket would meet too: no point falling back over them.
function isRefusal(error) {
  return ["unauthorized", "server_full", "rate_limited", "model_loading", "shutting_down"].includes(error.code);
}

function closeReason(event) {
  if (event.code === 1013) return "The server is full; try again later.";
  if (event.code === 4408) return "Closed: this page read nothing for too long (the tab was asleep?). Start again.";
  if (event.code === 4401 || event.code === 1008) return event.reason || "Unauthorized: check the API key.";
  if (event.code === 1006) {
    return stats.state === "connecting"
      ? "Could not connect (server down, or the API key was refused)."
      : "Connection lost.";
  }
  return `Connection closed (${event.code}${event.reason ? ": " + event.reason : ""}).`;
}

function stopSession(byUser = true) {
  if (!conn) return;
  userStopped = byUser;
  if (conn.isOpen()) {
    conn.send(JSON.stringify({ type: "session.stop" }));
    const closing = conn;
    setTimeout(() => closing.close(), 3000);  // the server closes first; this is a fallback
  } else {
    conn.close();
  }
  if (!byUser) { conn.detach(); conn = null; media?.dispose(); media = null; }
}

function switchPrompt(prompt) {
  prompt = (prompt ?? ui.prompt.value).trim();
  if (!conn || !conn.isOpen() || !prompt) return null;
  const eventId = "web_" + Math.random().toString(36).slice(2, 12);
  stats.promptSwitches.push({ event_id: eventId, prompt, sentAt: performance.now(), queuedAt: null,
                              atFrame: null, firstFrameAt: null, latencyMs: null });
  conn.send(JSON.stringify({ type: "session.update", prompt, event_id: eventId }));
  return eventId;
}

// Called for every painted frame with the prompt event it was generated under.
function framePainted(now, eventId, count = 1) {
  stats.framesPainted += count;
  paintTimes.push(now);
  stats.paints.push([now, count]);
  if (stats.paints.length > PAINT_LOG_MAX) stats.paints.splice(0, stats.paints.length - PAINT_LOG_MAX);
  if (stats.firstFrameAt === null) {
    stats.firstFrameAt = now;
    stats.firstFrameLatencyMs = now - stats.startSentAt;
    ui.firstFrame.textContent = `${stats.firstFrameLatencyMs.toFixed(0)} ms`;
  }
  if (!eventId) return;
  const sw = stats.promptSwitches.find((s) => s.event_id === eventId);
  if (sw && sw.firstFrameAt === null) {
    sw.firstFrameAt = now;
    sw.latencyMs = now - sw.sentAt;
    stats.lastPromptSwitchFirstFrameAt = now;
    stats.lastPromptSwitchLatencyMs = sw.latencyMs;
  }
}

const paintTimes = [];
setInterval(() => {
  const now = performance.now();
  while (paintTimes.length && now - paintTimes[0] > 2000) paintTimes.shift();
  stats.paintFps = paintTimes.length / 2;
  ui.fps.textContent = stats.paintFps.toFixed(1);
  ui.frames.textContent = String(stats.framesPainted);
  const switchMs = stats.lastPromptSwitchLatencyMs;
  ui.latency.textContent = (stats.serverLatencyMs !== null ? `server ${stats.serverLatencyMs.toFixed(0)} ms` : "-")
    + (stats.bufferMs !== null ? ` · buffer ${stats.bufferMs.toFixed(0)} ms` : "")
    + (switchMs !== null ? ` · switch ${switchMs.toFixed(0)} ms` : "");
  media?.tick();
  measureBuffer();
}, 250);

async function measureBuffer() {
  if (media instanceof WebRtcSink) {
    const ms = await media.jitterBufferMs();
    if (ms !== null) stats.bufferMs = ms;
  } else if (media instanceof Fmp4Sink && media.attached) {
    const b = media.sourceBuffer.buffered;
    if (b.length) stats.bufferMs = 1000 * Math.max(0, b.end(b.length - 1) - ui.video.currentTime);
  }
}

function fallBackToJpeg(reason) {
  fallBack(reason, "jpeg");
}

function fallBack(reason, format) {
  stats.fallbackReason = reason;
  if (fallbackTried) { showMessage(reason); stopSession(); return; }
  stopSession(false);
  start({ ...lastStartOptions, format, fallbackReason: reason });
}

// ---------------------------------------------------------------- recording
// fMP4: the received bytes are the recording (exact, no re-encode): init segment plus
// fragments from the last keyframe before the click on, decode times moved to start at
// zero. JPEG: the canvas through MediaRecorder (WebM).
function toggleRecording() {
  if (recording) { finishRecording(); return; }
  if (stats.format === "fmp4") {
    recording = { kind: "fmp4", parts: [], init: media?.initSegment ?? null, base: null, bytes: 0 };
    for (const fragment of media?.sinceKeyframe ?? []) recordFragment(fragment);
  } else {
    // JPEG: the canvas as a stream; WebRTC: the track itself.
    const stream = stats.format === "webrtc" ? ui.video.srcObject : ui.canvas.captureStream(stats.fps || 16);
    const recorder = new MediaRecorder(stream, { mimeType: "video/webm" });
    recording = { kind: "webm", parts: [], recorder, bytes: 0 };
    recorder.ondataavailable = (e) => { if (e.data.size) { recording?.parts.push(e.data); stats.recordedBytes += e.data.size; } };
    recorder.start(500);
  }
  ui.record.classList.add("recording");
  ui.record.textContent = "Stop recording";
}

function recordFragment(buffer, info = fragmentInfo(buffer)) {
  if (!recording || recording.kind !== "fmp4") return;
  recording.init ??= media?.initSegment ?? null;  // Record pressed before the init segment came
  if (!recording.init) return;
  if (!info) return;
  if (recording.base === null) {
    if (!info.firstSampleSync) return;  // a recording must start on a keyframe
    recording.base = info.tfdt ? info.tfdt.value : 0n;
  }
  if (recording.bytes + buffer.byteLength > RECORD_MAX_BYTES) { finishRecording(); return; }
  const copy = buffer.slice(0);
  if (info.tfdt) {
    const view = new DataView(copy);
    const t = info.tfdt.value - recording.base;
    if (info.tfdt.version === 1) view.setBigUint64(info.tfdt.pos, t);
    else view.setUint32(info.tfdt.pos, Number(t));
  }
  recording.parts.push(copy);
  recording.bytes += copy.byteLength;
  stats.recordedBytes = recording.bytes;
}

function finishRecording() {
  const rec = recording;
  recording = null;
  ui.record.classList.remove("recording");
  ui.record.textContent = "Record";
  if (!rec) return;
  const save = (blob, ext) => {
    if (!blob.size) return;
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `framecast-${stats.sessionId || "stream"}.${ext}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  };
  if (rec.kind === "fmp4") {
    if (rec.init && rec.parts.length) save(new Blob([rec.init, ...rec.parts], { type: "video/mp4" }), "mp4");
  } else {
    rec.recorder.onstop = () => save(new Blob(rec.parts, { type: "video/webm" }), "webm");
    rec.recorder.stop();
  }
}

// ---------------------------------------------------------------- wiring
$("controls").addEventListener("submit", (e) => { e.preventDefault(); start(); });
ui.stop.addEventListener("click", () => stopSession(true));
ui.switch.addEventListener("click", () => switchPrompt());
ui.record.addEventListener("click", toggleRecording);
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if (conn) switchPrompt(); else start();
  }
});

const params = new URLSearchParams(window.location.search);
if (params.get("api_key")) {
  ui.apiKey.value = params.get("api_key");
  // Out of the address bar, so it is not kept in history or sent on as a Referer.
  const clean = new URL(window.location.href);
  clean.searchParams.delete("api_key");
  history.replaceState(null, "", clean.toString());
}
if (params.get("prompt")) ui.prompt.value = params.get("prompt");
if (params.get("format")) ui.format.value = params.get("format");
if (params.get("seed")) ui.seed.value = params.get("seed");
if (params.get("autostart") === "1") start({ maxSeconds: params.get("max_seconds") || undefined });

window.framecast = { start, stop: () => stopSession(true), switchPrompt, toggleRecording };
