// Where media goes: fMP4 fragments into Media Source Extensions, JPEG frames onto a canvas.
// Both stay near the live edge and report each painted frame, with the prompt event it
// was generated under, through `host.painted(now, eventId, count)`.
//
// host: {stats, painted(now, eventId, count), fallback(reason), fragment(buffer, info)}

import { codecFromInit, fragmentInfo } from "./mp4.js";

// Media arrives a chunk (0.5-0.75 s) at a time, each its lead (0.35 s or more) before it
// shows: right after a chunk arrives the player is lead + chunk behind the newest media,
// right before the next one only the lead. That low point is how far behind it really is;
// when even it stays above LIVE_LAG_MAX_S for a while (a tab that slept, a decoder that fell
// behind), playing the backlog would add it to every prompt switch's latency: jump forward.
// Judging by the newest media alone would jump after every chunk and skip video.
const LIVE_LAG_MAX_S = 1.0;     // lowest lag over LIVE_LAG_WINDOW_S above this: jump forward
const LIVE_LAG_TARGET_S = 0.3;  // ...so that the lowest lag becomes this
const LIVE_LAG_WINDOW_S = 2.5;  // longer than a chunk and a lead, so it holds a low point
const KEEP_BEHIND_S = 4;        // played media kept in the SourceBuffer (for small seeks back)
const JPEG_QUEUE_MAX = 64;      // decoded frames waiting for their time; beyond this, drop the oldest

// ---------------------------------------------------------------- fMP4 through MSE
export class Fmp4Sink {
  constructor(video, canvas, host) {
    this.video = video;
    this.host = host;
    this.queue = [];
    this.lags = new LagWindow();
    this.timeline = [];  // {start, eventId} per fragment: the prompt event from that media time on
    this.sourceBuffer = null;
    this.ended = false;
    this.mediaSource = new MediaSource();
    this.opened = new Promise((resolve) => this.mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    canvas.hidden = true;
    video.hidden = false;
    this.video.src = URL.createObjectURL(this.mediaSource);
    this.presented = 0;
    this.disposed = false;
    const onFrame = (now, metadata) => {
      if (this.disposed) return;  // a newer session owns the video element now
      const count = Math.max(1, metadata.presentedFrames - this.presented);
      this.presented = metadata.presentedFrames;
      host.painted(now, this.eventAt(metadata.mediaTime), count);
      this.video.requestVideoFrameCallback(onFrame);
    };
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
      this.video.requestVideoFrameCallback(onFrame);
    } else {  // coarse: timeupdate fires a few times a second, not per frame
      this.onTimeUpdate = () => host.painted(performance.now(), this.eventAt(this.video.currentTime));
      this.video.addEventListener("timeupdate", this.onTimeUpdate);
    }
  }

  dispose() {
    this.disposed = true;
    if (this.onTimeUpdate) this.video.removeEventListener("timeupdate", this.onTimeUpdate);
  }

  eventAt(t) {
    for (let i = this.timeline.length - 1; i >= 0; i--) {
      if (this.timeline[i].start <= t + 1e-3) return this.timeline[i].eventId;
    }
    return null;
  }

  // Called in arrival order; the queue keeps that order even while the MediaSource opens.
  push(meta, buffer, eventId) {
    if (this.disposed) return;
    if (meta.init) {
      this.initSegment = buffer;  // kept so a recording can start mid-stream
      // The init segment is what the decoder will get; session.started's codec is the fallback.
      this.host.stats.codec = codecFromInit(buffer) || this.host.stats.serverCodec;
      this.mime = `video/mp4; codecs="${this.host.stats.codec}"`;
      if (!MediaSource.isTypeSupported(this.mime)) { this.host.fallback(`this browser cannot play ${this.mime}`); return; }
    } else {
      this.timeline.push({ start: meta.pts, eventId });
      if (this.timeline.length > 256) this.timeline.splice(0, this.timeline.length - 256);
      // Fragments since the last keyframe, so a recording can start at once (from that keyframe).
      const info = fragmentInfo(buffer);
      if (info?.firstSampleSync) this.sinceKeyframe = [];
      (this.sinceKeyframe ??= []).push(buffer);
      this.host.fragment(buffer, info);
    }
    this.queue.push(buffer);
    this.opened.then(() => { this.attach(); this.pump(); });
  }

  attach() {
    if (this.sourceBuffer || !this.mime || this.disposed || this.mediaSource.readyState !== "open") return;
    this.sourceBuffer = this.mediaSource.addSourceBuffer(this.mime);
    this.sourceBuffer.mode = "segments";
    this.sourceBuffer.addEventListener("updateend", () => this.pump());
    this.sourceBuffer.addEventListener("error", () => this.host.stats.errors.push({ code: "mse", message: "SourceBuffer error" }));
  }

  // True while this sink still owns a live MediaSource (a newer session, a fallback or
  // endOfStream detaches it, and its SourceBuffer then throws on every access).
  get attached() {
    return !this.disposed && this.sourceBuffer !== null && this.mediaSource.readyState === "open";
  }

  pump() {
    const sb = this.sourceBuffer;
    if (!this.attached || sb.updating) return;
    if (this.queue.length) {
      try {
        sb.appendBuffer(this.queue[0]);
        this.queue.shift();
      } catch (err) {
        if (err.name === "QuotaExceededError") this.trim(0.5);
        else this.host.stats.errors.push({ code: "mse", message: String(err) });
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
    const cut = this.video.currentTime - keepBehind;
    if (cut - b.start(0) < 1) return false;
    sb.remove(b.start(0), cut);
    return true;
  }

  // Stay near the live edge: jump forward when behind, nudge play when stalled.
  chase() {
    if (!this.attached) return;
    const v = this.video, b = this.sourceBuffer.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    const behind = this.lags.behind(end - v.currentTime);
    if (v.currentTime < b.start(0)) {
      v.currentTime = b.start(0);
    } else if (behind > 0) {
      v.currentTime = Math.min(end, v.currentTime + behind);
      this.host.stats.liveEdgeJumps += 1;
    }
    if (v.paused && !this.ended) v.play().catch(() => {});
  }

  tick() { this.chase(); this.pump(); }

  end() {
    this.ended = true;
    this.pump();
  }
}

// ---------------------------------------------------------------- JPEG on a canvas
export class JpegSink {
  constructor(video, canvas, host) {
    this.canvas = canvas;
    this.host = host;
    this.frames = [];       // decoded, waiting for their presentation time: {bitmap, pts, eventId}
    this.decoding = Promise.resolve();
    this.decodingCount = 0;  // frames still being decoded: the paint loop runs until they are shown
    this.clock = null;      // performance.now() - pts*1000 of the stream's first frame
    this.lags = new LagWindow();
    this.ended = false;
    this.context = canvas.getContext("2d");
    video.hidden = true;
    video.removeAttribute("src");
    canvas.hidden = false;
    this.disposed = false;
    const draw = (now) => {
      if (this.disposed) return;
      this.draw(now);
      if (!this.ended || this.frames.length || this.decodingCount) requestAnimationFrame(draw);
    };
    requestAnimationFrame(draw);
  }

  push(meta, buffer, eventId) {
    // Decode in order: createImageBitmap promises may settle out of order.
    this.decodingCount += 1;
    this.decoding = this.decoding
      .then(() => createImageBitmap(new Blob([buffer], { type: "image/jpeg" })))
      .then((bitmap) => {
        this.frames.push({ bitmap, pts: meta.pts, eventId });
        while (this.frames.length > JPEG_QUEUE_MAX) { this.frames.shift().bitmap.close(); this.host.stats.framesDropped += 1; }
      })
      .catch((err) => this.host.stats.errors.push({ code: "jpeg", message: String(err) }))
      .finally(() => { this.decodingCount -= 1; });
  }

  // Paint the newest frame whose time has come; frames that arrive late re-anchor the
  // clock (no catch-up burst), and a backlog is skipped rather than played slowly.
  draw(now) {
    if (!this.frames.length) return;
    if (this.clock === null || this.frames[0].pts * 1000 + this.clock < now - 100) {
      this.clock = now - this.frames[0].pts * 1000;
    }
    const behind = this.lags.behind((this.frames[this.frames.length - 1].pts * 1000 + this.clock - now) / 1000);
    if (behind > 0) {  // jump to near the live edge, as the MSE path does
      this.clock -= behind * 1000;
      this.host.stats.liveEdgeJumps += 1;
    }
    let due = null;
    while (this.frames.length && this.frames[0].pts * 1000 + this.clock <= now) {
      if (due) { due.bitmap.close(); this.host.stats.framesDropped += 1; }
      due = this.frames.shift();
    }
    if (!due) return;
    const c = this.canvas;
    if (c.width !== due.bitmap.width || c.height !== due.bitmap.height) {
      c.width = due.bitmap.width; c.height = due.bitmap.height;
    }
    this.context.drawImage(due.bitmap, 0, 0);
    due.bitmap.close();
    this.host.painted(now, due.eventId);
  }

  tick() {}

  end() { this.ended = true; }

  dispose() { this.disposed = true; this.frames.forEach((f) => f.bitmap.close()); this.frames = []; }
}

// How far the player is behind where it should be: the lowest lag (newest media minus the
// playhead, seconds) seen over the last LIVE_LAG_WINDOW_S, beyond LIVE_LAG_TARGET_S, once
// that low point is above LIVE_LAG_MAX_S; else 0. After a jump the window starts over.
class LagWindow {
  constructor() { this.samples = []; }

  behind(lag, now = performance.now()) {
    this.samples.push([now, lag]);
    while (now - this.samples[0][0] > LIVE_LAG_WINDOW_S * 1000) this.samples.shift();
    if (now - this.samples[0][0] < 0.8 * LIVE_LAG_WINDOW_S * 1000) return 0;  // not long enough to judge
    const lowest = Math.min(...this.samples.map(([, l]) => l));
    if (lowest <= LIVE_LAG_MAX_S) return 0;
    this.samples = [];
    return lowest - LIVE_LAG_TARGET_S;
  }
}
