"use strict";
// Framecast browser viewer. Plain JS, no build step: the server serves this folder at /.
//
// Speaks the wire protocol of clients/protocol.py over WebSocket /v1/realtime/video:
// JSON text messages for control, and for media a `video.chunk` JSON followed by one
// binary message. fMP4 (an init segment, then one fragment per chunk) plays through
// Media Source Extensions; JPEG frames (one per message) are drawn on a canvas.
// Latency stays low by trimming what has been played and jumping to the live edge
// when playback falls behind. window.framecastStats is read by the browser test.

const REALTIME_PATH = "/v1/realtime/video";
const PROBE_CODEC = 'video/mp4; codecs="avc1.42E01E"';  // H.264 baseline, what libx264 baseline gives
// Media arrives a chunk (~0.5 s) at a time, so up to a chunk behind the newest media is the
// steady state; the server may send up to its lead (1 s by default) ahead of real time, and
// playing that backlog would add it to every prompt switch's latency.
const LIVE_LAG_MAX_S = 1.0;     // further than this behind the newest media: jump forward
const LIVE_LAG_TARGET_S = 0.3;  // ...to this far behind it
const KEEP_BEHIND_S = 4;        // played media kept in the SourceBuffer (for small seeks back)
const JPEG_QUEUE_MAX = 64;      // decoded frames waiting for their time; beyond this, drop the oldest
const RECORD_MAX_BYTES = 512 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const ui = {
  video: $("video"), canvas: $("canvas"), prompt: $("prompt"), start: $("start"), stop: $("stop"),
  switch: $("switch"), record: $("record"), format: $("format"), seed: $("seed"), apiKey: $("api-key"),
  status: $("status"), message: $("message"), fps: $("fps"), latency: $("latency"),
  firstFrame: $("first-frame"), frames: $("frames"), formatBadge: $("format-badge"),
};

// ---------------------------------------------------------------- stats (test hooks)
function freshStats() {
  return {
    state: "idle",             // idle | connecting | live | done | closed | error
    format: null, codec: null, serverCodec: null, fallbackReason: null, sessionId: null, width: 0, height: 0, fps: 0,
    mseSupported: typeof MediaSource !== "undefined" && MediaSource.isTypeSupported(PROBE_CODEC),
    startSentAt: null, firstChunkAt: null, firstFrameAt: null, firstFrameLatencyMs: null,
    chunksReceived: 0, framesReceived: 0, bytesReceived: 0, framesPainted: 0, framesDropped: 0,
    liveEdgeJumps: 0, serverLatencyMs: null, paintFps: 0,
    promptSwitches: [],        // {event_id, prompt, sentAt, queuedAt, atChunk, firstChunkIndex, firstChunkAt, firstFrameAt, latencyMs}
    lastPromptSwitchFirstFrameAt: null, lastPromptSwitchLatencyMs: null,
    recordedBytes: 0, errors: [], closeCode: null, doneReason: null,
  };
}
let stats = window.framecastStats = freshStats();

// ---------------------------------------------------------------- MP4 boxes
// Just enough ISO-BMFF to read the codec from the init segment and, for recording, the
// first sample's sync flag and the decode time of each fragment.
function* boxes(view, start, end) {
  let pos = start;
  while (pos + 8 <= end) {
    let size = view.getUint32(pos);
    const type = String.fromCharCode(view.getUint8(pos + 4), view.getUint8(pos + 5),
                                     view.getUint8(pos + 6), view.getUint8(pos + 7));
    let header = 8;
    if (size === 1) { size = Number(view.getBigUint64(pos + 8)); header = 16; }
    else if (size === 0) size = end - pos;
    if (size < header || pos + size > end) return;
    yield { type, start: pos, payload: pos + header, end: pos + size };
    pos += size;
  }
}

function findBox(view, path, start = 0, end = view.byteLength) {
  for (const box of boxes(view, start, end)) {
    if (box.type !== path[0]) continue;
    if (path.length === 1) return box;
    const inner = findBox(view, path.slice(1), box.payload, box.end);
    if (inner) return inner;
  }
  return null;
}

function hex2(n) { return n.toString(16).toUpperCase().padStart(2, "0"); }

// RFC 6381 codec string (avc1.PPCCLL) from the init segment's avcC.
function codecFromInit(buffer) {
  const view = new DataView(buffer);
  const stsd = findBox(view, ["moov", "trak", "mdia", "minf", "stbl", "stsd"]);
  if (!stsd) return null;
  const entry = boxes(view, stsd.payload + 8, stsd.end).next().value;  // skip version/flags, count
  if (!entry) return null;
  if (entry.type !== "avc1" && entry.type !== "avc3") return entry.type;
  const avcC = findBox(view, ["avcC"], entry.payload + 78, entry.end);  // 78: VisualSampleEntry fields
  if (!avcC) return null;
  const p = avcC.payload;
  return `${entry.type}.${hex2(view.getUint8(p + 1))}${hex2(view.getUint8(p + 2))}${hex2(view.getUint8(p + 3))}`;
}

// {firstSampleSync, tfdt: {pos, version, value}} of a moof+mdat fragment.
function fragmentInfo(buffer) {
  const view = new DataView(buffer);
  const traf = findBox(view, ["moof", "traf"]);
  if (!traf) return null;
  const tfhd = findBox(view, ["tfhd"], traf.payload, traf.end);
  const tfdt = findBox(view, ["tfdt"], traf.payload, traf.end);
  const trun = findBox(view, ["trun"], traf.payload, traf.end);
  let sampleFlags = null;
  if (tfhd) {  // default-sample-flags, after the optional fields that precede it
    const f = view.getUint32(tfhd.payload) & 0xffffff;
    let pos = tfhd.payload + 8 + (f & 0x1 ? 8 : 0) + (f & 0x2 ? 4 : 0) + (f & 0x8 ? 4 : 0) + (f & 0x10 ? 4 : 0);
    if (f & 0x20) sampleFlags = view.getUint32(pos);
  }
  if (trun) {
    const f = view.getUint32(trun.payload) & 0xffffff;
    let pos = trun.payload + 8 + (f & 0x1 ? 4 : 0);
    if (f & 0x4) sampleFlags = view.getUint32(pos);
    else if (f & 0x400) sampleFlags = view.getUint32(pos + (f & 0x100 ? 4 : 0) + (f & 0x200 ? 4 : 0));
  }
  let time = null;
  if (tfdt) {
    const version = view.getUint8(tfdt.payload);
    const pos = tfdt.payload + 4;
    time = { pos, version, value: version === 1 ? view.getBigUint64(pos) : BigInt(view.getUint32(pos)) };
  }
  // sample_is_non_sync_sample is bit 16; with no flags anywhere, assume sync.
  return { firstSampleSync: sampleFlags === null || ((sampleFlags >> 16) & 1) === 0, tfdt: time };
}

// ---------------------------------------------------------------- session state
let ws = null;
let media = null;       // the fMP4 or JPEG sink of the current session
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
  if (requested === "fmp4" || requested === "jpeg") return requested;
  return stats.mseSupported ? "fmp4" : "jpeg";
}

function realtimeUrl(apiKey) {
  const url = new URL(REALTIME_PATH, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (apiKey) url.searchParams.set("api_key", apiKey);  // browsers cannot set headers on a WebSocket
  return url.toString();
}

function start(options = {}) {
  stopSession(false);
  media?.dispose();
  lastStartOptions = options;
  const prompt = (options.prompt ?? ui.prompt.value).trim();
  if (!prompt) { showMessage("Type a prompt first."); return; }
  const format = chooseFormat(options.format ?? ui.format.value);
  const keep = { mseSupported: stats.mseSupported, fallbackReason: options.fallbackReason ?? null };
  stats = window.framecastStats = Object.assign(freshStats(), keep, { state: "connecting", format });
  fallbackTried = !!options.fallbackReason;
  userStopped = false;
  currentEventId = null;
  pendingMeta = null;
  showMessage(keep.fallbackReason ? `Using JPEG: ${keep.fallbackReason}` : "", true);
  setStatus("connecting…");
  ui.formatBadge.textContent = format;
  const seedText = options.seed ?? ui.seed.value;
  const message = { type: "session.start", prompt, format };
  if (seedText !== "" && seedText !== undefined && seedText !== null) message.seed = Number(seedText);
  if (options.maxSeconds) message.max_seconds = Number(options.maxSeconds);

  const socket = new WebSocket(realtimeUrl(options.apiKey ?? ui.apiKey.value));
  socket.binaryType = "arraybuffer";
  ws = socket;
  media = format === "fmp4" ? new Fmp4Sink() : new JpegSink();
  socket.onopen = () => {
    stats.startSentAt = performance.now();
    socket.send(JSON.stringify(message));
  };
  socket.onmessage = (event) => {
    if (socket !== ws) return;
    if (typeof event.data === "string") onControl(JSON.parse(event.data));
    else onMedia(event.data);
  };
  socket.onclose = (event) => { if (socket === ws) onClose(event); };
  setLive(true);
}

function onControl(msg) {
  switch (msg.type) {
    case "session.started":
      Object.assign(stats, { sessionId: msg.session_id, width: msg.width, height: msg.height, fps: msg.fps,
                             serverCodec: msg.codec ?? null, state: "live" });
      setStatus(`live · ${msg.model} · ${msg.width}×${msg.height} @ ${msg.fps} fps`, "live");
      break;
    case "video.chunk":
      pendingMeta = msg;
      break;
    case "session.update.queued": {
      const sw = stats.promptSwitches.find((s) => s.event_id === msg.event_id);
      if (sw) { sw.queuedAt = performance.now(); sw.atChunk = msg.at_chunk ?? null; }
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
  stats.chunksReceived += 1;
  stats.framesReceived += meta.frames;
  stats.bytesReceived += buffer.byteLength;
  if (meta.frames > 0 && stats.firstChunkAt === null) stats.firstChunkAt = performance.now();
  if (meta.prompt_event_id && meta.prompt_event_id !== currentEventId) {
    currentEventId = meta.prompt_event_id;  // carried forward: later chunks may not repeat it
    const sw = stats.promptSwitches.find((s) => s.event_id === currentEventId);
    if (sw && sw.firstChunkIndex === undefined) { sw.firstChunkIndex = meta.index; sw.firstChunkAt = performance.now(); }
  }
  media.push(meta, buffer, currentEventId);
}

function onClose(event) {
  stats.closeCode = event.code;
  const ended = userStopped || stats.state === "done";
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
  ws = null;
}

function closeReason(event) {
  if (event.code === 1013) return "The server is full; try again later.";
  if (event.code === 4401 || event.code === 1008) return event.reason || "Unauthorized: check the API key.";
  if (event.code === 1006) {
    return stats.state === "connecting"
      ? "Could not connect (server down, or the API key was refused)."
      : "Connection lost.";
  }
  return `Connection closed (${event.code}${event.reason ? ": " + event.reason : ""}).`;
}

function stopSession(byUser = true) {
  if (!ws) return;
  userStopped = byUser;
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "session.stop" }));
    const socket = ws;
    setTimeout(() => socket.close(), 3000);  // the server closes first; this is a fallback
  } else {
    ws.close();
  }
  if (!byUser) { ws.onclose = null; ws = null; media?.dispose(); media = null; }
}

function switchPrompt(prompt) {
  prompt = (prompt ?? ui.prompt.value).trim();
  if (!ws || ws.readyState !== WebSocket.OPEN || !prompt) return null;
  const eventId = "web_" + Math.random().toString(36).slice(2, 12);
  stats.promptSwitches.push({ event_id: eventId, prompt, sentAt: performance.now(), queuedAt: null,
                              atChunk: null, firstFrameAt: null, latencyMs: null });
  ws.send(JSON.stringify({ type: "session.update", prompt, event_id: eventId }));
  return eventId;
}

// Called for every painted frame with the prompt event it was generated under.
function framePainted(now, eventId, count = 1) {
  stats.framesPainted += count;
  paintTimes.push(now);
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
  ui.latency.textContent = (stats.serverLatencyMs !== null ? `${stats.serverLatencyMs.toFixed(0)} ms` : "-")
    + (switchMs !== null ? ` · switch ${switchMs.toFixed(0)} ms` : "");
  media?.tick();
}, 250);

// ---------------------------------------------------------------- fMP4 through MSE
class Fmp4Sink {
  constructor() {
    this.queue = [];
    this.timeline = [];  // {start, end, eventId}: which prompt event each stretch of media time is under
    this.sourceBuffer = null;
    this.ended = false;
    this.mediaSource = new MediaSource();
    this.opened = new Promise((resolve) => this.mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    ui.canvas.hidden = true;
    ui.video.hidden = false;
    ui.video.src = URL.createObjectURL(this.mediaSource);
    this.presented = 0;
    this.disposed = false;
    const onFrame = (now, metadata) => {
      if (this.disposed) return;  // a newer session owns the video element now
      const count = Math.max(1, metadata.presentedFrames - this.presented);
      this.presented = metadata.presentedFrames;
      framePainted(now, this.eventAt(metadata.mediaTime), count);
      ui.video.requestVideoFrameCallback(onFrame);
    };
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
      ui.video.requestVideoFrameCallback(onFrame);
    } else {  // coarse: timeupdate fires a few times a second, not per frame
      this.onTimeUpdate = () => framePainted(performance.now(), this.eventAt(ui.video.currentTime));
      ui.video.addEventListener("timeupdate", this.onTimeUpdate);
    }
  }

  dispose() {
    this.disposed = true;
    if (this.onTimeUpdate) ui.video.removeEventListener("timeupdate", this.onTimeUpdate);
  }

  eventAt(t) {
    for (let i = this.timeline.length - 1; i >= 0; i--) {
      if (this.timeline[i].start <= t + 1e-3) return this.timeline[i].eventId;
    }
    return null;
  }

  async push(meta, buffer, eventId) {
    if (this.disposed) return;
    if (meta.init) {
      this.initSegment = buffer;  // kept so a recording can start mid-stream
      // The init segment is what the decoder will get; session.started's codec is the fallback.
      stats.codec = codecFromInit(buffer) || stats.serverCodec;
      const mime = `video/mp4; codecs="${stats.codec}"`;
      if (!MediaSource.isTypeSupported(mime)) { fallBackToJpeg(`this browser cannot play ${mime}`); return; }
      await this.opened;
      this.sourceBuffer = this.mediaSource.addSourceBuffer(mime);
      this.sourceBuffer.mode = "segments";
      this.sourceBuffer.addEventListener("updateend", () => this.pump());
      this.sourceBuffer.addEventListener("error", () => stats.errors.push({ code: "mse", message: "SourceBuffer error" }));
      if (recording) recording.init = buffer;
    } else {
      this.timeline.push({ start: meta.pts, eventId });
      if (this.timeline.length > 256) this.timeline.splice(0, this.timeline.length - 256);
      // Fragments since the last keyframe, so a recording can start at once (from that keyframe).
      const info = fragmentInfo(buffer);
      if (info?.firstSampleSync) this.sinceKeyframe = [];
      (this.sinceKeyframe ??= []).push(buffer);
      recordFragment(buffer, info);
    }
    this.queue.push(buffer);
    await this.opened;
    this.pump();
  }

  pump() {
    const sb = this.sourceBuffer;
    if (!sb || sb.updating || this.mediaSource.readyState !== "open") return;
    if (this.queue.length) {
      try {
        sb.appendBuffer(this.queue[0]);
        this.queue.shift();
      } catch (err) {
        if (err.name === "QuotaExceededError") this.trim(0.5);
        else stats.errors.push({ code: "mse", message: String(err) });
      }
      return;
    }
    if (this.trim(KEEP_BEHIND_S)) return;
    if (this.ended) this.mediaSource.endOfStream();
    this.chase();
  }

  // Remove played media so the buffer (and memory) stays small. True if it started a removal.
  trim(keepBehind) {
    const sb = this.sourceBuffer, b = sb.buffered;
    if (!b.length || sb.updating) return false;
    const cut = ui.video.currentTime - keepBehind;
    if (cut - b.start(0) < 1) return false;
    sb.remove(b.start(0), cut);
    return true;
  }

  // Stay near the live edge: jump forward when behind, nudge play when stalled.
  chase() {
    const v = ui.video, b = this.sourceBuffer?.buffered;
    if (!b || !b.length) return;
    const end = b.end(b.length - 1);
    if (v.currentTime < b.start(0) || end - v.currentTime > LIVE_LAG_MAX_S) {
      v.currentTime = Math.max(b.start(0), end - LIVE_LAG_TARGET_S);
      stats.liveEdgeJumps += 1;
    }
    if (v.paused && !this.ended) v.play().catch(() => {});
  }

  tick() { if (this.sourceBuffer) { this.chase(); this.pump(); } }

  end() {
    this.ended = true;
    this.pump();
  }
}

// ---------------------------------------------------------------- JPEG on a canvas
class JpegSink {
  constructor() {
    this.frames = [];       // decoded, waiting for their presentation time: {bitmap, pts, eventId}
    this.decoding = Promise.resolve();
    this.clock = null;      // performance.now() - pts*1000 of the stream's first frame
    this.ended = false;
    this.context = ui.canvas.getContext("2d");
    ui.video.hidden = true;
    ui.video.removeAttribute("src");
    ui.canvas.hidden = false;
    this.disposed = false;
    const draw = (now) => {
      if (this.disposed) return;
      this.draw(now);
      if (!this.ended || this.frames.length) requestAnimationFrame(draw);
    };
    requestAnimationFrame(draw);
  }

  push(meta, buffer, eventId) {
    // Decode in order: createImageBitmap promises may settle out of order.
    this.decoding = this.decoding
      .then(() => createImageBitmap(new Blob([buffer], { type: "image/jpeg" })))
      .then((bitmap) => {
        this.frames.push({ bitmap, pts: meta.pts, eventId });
        while (this.frames.length > JPEG_QUEUE_MAX) { this.frames.shift().bitmap.close(); stats.framesDropped += 1; }
      })
      .catch((err) => stats.errors.push({ code: "jpeg", message: String(err) }));
  }

  // Paint the newest frame whose time has come; frames that arrive late re-anchor the
  // clock (no catch-up burst), and a backlog is skipped rather than played slowly.
  draw(now) {
    if (!this.frames.length) return;
    if (this.clock === null || this.frames[0].pts * 1000 + this.clock < now - 100) {
      this.clock = now - this.frames[0].pts * 1000;
    }
    const behindMs = this.frames[this.frames.length - 1].pts * 1000 + this.clock - now;
    if (behindMs > LIVE_LAG_MAX_S * 1000) {  // jump to near the live edge, as the MSE path does
      this.clock -= behindMs - LIVE_LAG_TARGET_S * 1000;
      stats.liveEdgeJumps += 1;
    }
    let due = null;
    while (this.frames.length && this.frames[0].pts * 1000 + this.clock <= now) {
      if (due) { due.bitmap.close(); stats.framesDropped += 1; }
      due = this.frames.shift();
    }
    if (!due) return;
    const c = ui.canvas;
    if (c.width !== due.bitmap.width || c.height !== due.bitmap.height) {
      c.width = due.bitmap.width; c.height = due.bitmap.height;
    }
    this.context.drawImage(due.bitmap, 0, 0);
    due.bitmap.close();
    framePainted(now, due.eventId);
  }

  tick() {}

  end() { this.ended = true; }

  dispose() { this.disposed = true; this.frames.forEach((f) => f.bitmap.close()); this.frames = []; }
}

function fallBackToJpeg(reason) {
  stats.fallbackReason = reason;
  if (fallbackTried) { showMessage(reason); stopSession(); return; }
  stopSession(false);
  start({ ...lastStartOptions, format: "jpeg", fallbackReason: reason });
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
    const stream = ui.canvas.captureStream(stats.fps || 16);
    const recorder = new MediaRecorder(stream, { mimeType: "video/webm" });
    recording = { kind: "webm", parts: [], recorder, bytes: 0 };
    recorder.ondataavailable = (e) => { if (e.data.size) { recording?.parts.push(e.data); stats.recordedBytes += e.data.size; } };
    recorder.start(500);
  }
  ui.record.classList.add("recording");
  ui.record.textContent = "Stop recording";
}

function recordFragment(buffer, info = fragmentInfo(buffer)) {
  if (!recording || recording.kind !== "fmp4" || !recording.init) return;
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
    if (ws) switchPrompt(); else start();
  }
});

const params = new URLSearchParams(window.location.search);
if (params.get("api_key")) ui.apiKey.value = params.get("api_key");
if (params.get("prompt")) ui.prompt.value = params.get("prompt");
if (params.get("format")) ui.format.value = params.get("format");
if (params.get("seed")) ui.seed.value = params.get("seed");
if (params.get("autostart") === "1") start({ maxSeconds: params.get("max_seconds") || undefined });

window.framecast = { start, stop: () => stopSession(true), switchPrompt, toggleRecording };
