// Just enough ISO-BMFF (fragmented MP4) for the viewer: the codec string of the init
// segment (for MediaSource.addSourceBuffer) and, for recording, each fragment's first-sample
// sync flag and decode time.

export function* boxes(view, start, end) {
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

export function findBox(view, path, start = 0, end = view.byteLength) {
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
export function codecFromInit(buffer) {
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
export function fragmentInfo(buffer) {
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
