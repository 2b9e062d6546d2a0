// WebRTC: the session's frames on a video track, its JSON control messages on a data channel.
//
// Signalling is WHEP-style (server/routes/webrtc.py): OPTIONS for the ICE servers (Link
// headers), then POST the SDP offer (a recvonly video section and a data channel) to
// /v1/realtime/webrtc; the answer carries the server's candidates (no trickle). The data
// channel then speaks exactly what the WebSocket speaks, except that a `video.chunk` has
// no binary message after it: it announces a run of frames on the track, and `pts` is the
// run's place on the track (RTP time since the first frame), which is how a painted frame
// is tied to its stream frame and prompt event.

export const WEBRTC_PATH = "/v1/realtime/webrtc";
export const webrtcSupported = typeof RTCPeerConnection !== "undefined";
const RTP_CLOCK = 90000;
const GATHER_WAIT_MS = 1000;  // ICE gathering: host candidates come at once; STUN/TURN may take longer

// `<stun:host>; rel="ice-server"; username="u"; credential="c"` -> RTCIceServer
export function iceServersFromLinks(header) {
  if (!header) return [];
  const servers = [];
  for (const link of header.split(/,(?=\s*<)/)) {
    const [target, ...params] = link.split(";").map((s) => s.trim());
    const fields = Object.fromEntries(params.map((p) => {
      const i = p.indexOf("=");
      return i < 0 ? [p, ""] : [p.slice(0, i), decodeURIComponent(p.slice(i + 1).replace(/^"|"$/g, ""))];
    }));
    if (fields.rel !== "ice-server" || !target.startsWith("<")) continue;
    const server = { urls: target.slice(1, -1) };
    if (fields.username !== undefined) { server.username = fields.username; server.credential = fields.credential ?? ""; }
    servers.push(server);
  }
  return servers;
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_WAIT_MS);  // what was gathered so far will do
  });
}

// The control connection, with the shape app.js gives the WebSocket too:
// {send(text), isOpen(), close(), detach()}; handlers {open(), message(text), close(info), error(detail)}.
export function openWebRtc(apiKey, video, sink, handlers) {
  const url = new URL(WEBRTC_PATH, window.location.href).toString();
  const auth = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  let pc = null, channel = null, location = null, closed = false, attached = true;

  const finish = (info) => {
    if (closed) return;
    closed = true;
    if (attached) handlers.close(info);
    pc?.close();
    // Tell the server at once (it would notice the closed connection anyway).
    if (location) fetch(new URL(location, url), { method: "DELETE", headers: auth, keepalive: true }).catch(() => {});
  };

  (async () => {
    const options = await fetch(url, { method: "OPTIONS", headers: auth });
    const iceServers = options.ok ? iceServersFromLinks(options.headers.get("Link")) : [];
    pc = new RTCPeerConnection({ iceServers });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => sink.attach(event.track, event.receiver);
    channel = pc.createDataChannel("framecast");
    channel.onopen = () => attached && handlers.open();
    channel.onmessage = (event) => attached && typeof event.data === "string" && handlers.message(event.data);
    channel.onclose = () => finish({ code: 1000 });
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") finish({ code: 1006, reason: "the WebRTC connection failed (ICE)" });
    };
    await pc.setLocalDescription(await pc.createOffer());
    // Without STUN/TURN the browser's candidates are its host addresses, hidden behind mDNS
    // names the server does not resolve (its checks find us anyway): no need to wait.
    if (iceServers.length) await gathered(pc);
    const response = await fetch(url, { method: "POST", body: pc.localDescription.sdp,
                                        headers: { ...auth, "Content-Type": "application/sdp" } });
    if (!response.ok) {
      let detail = { code: `http_${response.status}`, message: `the server answered ${response.status}` };
      try { detail = (await response.json()).error ?? detail; } catch { /* not JSON */ }
      if (attached) handlers.error(detail);
      finish({ code: response.status === 401 ? 4401 : response.status === 503 ? 1013 : 4400 });
      return;
    }
    location = response.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  })().catch((err) => {
    if (attached) handlers.error({ code: "webrtc", message: `WebRTC could not connect: ${err.message || err}` });
    finish({ code: 1006 });
  });

  return {
    transport: "webrtc",
    send: (text) => channel?.readyState === "open" && channel.send(text),
    isOpen: () => channel?.readyState === "open",
    close: () => finish({ code: 1000 }),
    detach: () => { attached = false; finish({ code: 1000 }); },
    peer: () => pc,
  };
}

// Frames on a <video> from the track; each painted frame is tied to its stream frame by
// its RTP timestamp and the video.chunk runs, and reported with its prompt event.
export class WebRtcSink {
  constructor(video, canvas, host) {
    this.video = video;
    this.host = host;
    this.runs = [];      // video.chunk runs, in track order: {pts, frame, frames, eventId}
    this.firstRtp = null;  // RTP timestamp of the first painted frame: track time 0
    this.carried = null;  // the event of runs forgotten (only the last 256 are kept)
    this.presented = 0;
    this.disposed = false;
    this.receiver = null;
    canvas.hidden = true;
    video.hidden = false;
    video.removeAttribute("src");
    this.onFrame = (now, metadata) => {
      if (this.disposed) return;
      const count = Math.max(1, metadata.presentedFrames - this.presented);
      this.presented = metadata.presentedFrames;
      this.host.painted(now, this.eventAt(metadata.rtpTimestamp), count);
      this.video.requestVideoFrameCallback(this.onFrame);
    };
  }

  attach(track, receiver) {
    if (this.disposed) return;
    this.receiver = receiver;
    this.video.srcObject = new MediaStream([track]);
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) this.video.requestVideoFrameCallback(this.onFrame);
    this.video.play().catch(() => {});
  }

  // The prompt event in force at a painted frame: the last run that started at or before it
  // (runs without an event carry the one before them on).
  eventAt(rtpTimestamp) {
    if (rtpTimestamp === undefined || !this.runs.length) return null;
    this.firstRtp ??= rtpTimestamp;
    const t = ((rtpTimestamp - this.firstRtp) >>> 0) / RTP_CLOCK + this.runs[0].pts;
    const half = 0.5 / (this.host.stats.fps || 16);
    let event = null;
    for (const run of this.runs) {
      if (run.pts > t + half) break;
      if (run.eventId) event = run.eventId;
    }
    return event ?? this.carried;
  }

  // A video.chunk: no media follows it; it says where a run of frames sits on the track.
  push(meta, buffer, eventId) {
    this.runs.push({ pts: meta.pts, frame: meta.frame, frames: meta.frames, eventId: meta.prompt_event_id ?? null });
    if (this.runs.length > 256) {  // forget old runs, keeping the event they carried
      for (const run of this.runs.splice(0, this.runs.length - 256)) if (run.eventId) this.carried = run.eventId;
    }
    this.lastEventId = eventId;
  }

  // The receiver's jitter buffer: how long a frame waited in it on average (getStats).
  async jitterBufferMs() {
    if (!this.receiver) return null;
    const stats = await this.receiver.getStats();
    for (const s of stats.values()) {
      if (s.type === "inbound-rtp" && s.jitterBufferEmittedCount) {
        return (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
      }
    }
    return null;
  }

  tick() {
    if (this.video.paused && this.video.srcObject) this.video.play().catch(() => {});
  }

  end() {}

  dispose() {
    this.disposed = true;
    this.video.srcObject = null;
  }
}
