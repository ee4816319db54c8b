/* PACS viewer, measurements: length, angle, elliptical and rectangular ROI on the image, kept on
 * their image (instance and frame), saved as a DICOM SR (TID 1500) by the archive and loaded back.
 * Lengths use Pixel Spacing, Imager Pixel Spacing or the ultrasound region calibration (px without);
 * ROI statistics come from the stored pixel values (WADO-RS frames, native), through the Modality LUT. */
"use strict";
(() => {
  const P = window.PACS;
  const { $, el, t, hooks } = P;
  const API = new URL("api/measurements/", document.baseURI).href;
  const SVG = "http://www.w3.org/2000/svg";
  const TOOLS = ["length", "angle", "ellipse", "rectangle"];
  const KIND_LABEL = { length: "Length", angle: "Angle", ellipse: "Ellipse", rectangle: "Rectangle" };
  const NATIVE = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';
  Object.assign(P.VI, {
    "Measure": "Đo", "Length": "Độ dài", "Angle": "Góc", "Ellipse": "Elip", "Rectangle": "Chữ nhật",
    "Length: drag (L)": "Đo độ dài: kéo (L)", "Angle: three clicks (A)": "Đo góc: bấm ba điểm (A)",
    "Elliptical ROI: drag (E)": "Vùng elip: kéo (E)", "Rectangular ROI: drag (B)": "Vùng chữ nhật: kéo (B)",
    "Measurements": "Số đo", "Delete": "Xoá", "Save (SR)": "Lưu (SR)",
    "Delete the selected measurement (Delete)": "Xoá số đo đang chọn (Delete)",
    "Save as a DICOM SR in the archive": "Lưu thành DICOM SR trong hệ thống",
    "None yet: pick Length, Angle, Ellipse or Rectangle, then drag on the image.":
      "Chưa có: chọn Độ dài, Góc, Elip hoặc Chữ nhật rồi kéo trên ảnh.",
    "Mean": "TB", "SD": "ĐLC", "Min": "Nhỏ nhất", "Max": "Lớn nhất", "Area": "Diện tích",
    "Saving…": "Đang lưu…", "Saved in the archive (DICOM SR).": "Đã lưu vào hệ thống (DICOM SR).",
    "Cannot save: {0}": "Không lưu được: {0}", "Cannot load the measurements: {0}": "Không tải được số đo: {0}",
    "{0} measurements loaded from the archive.": "Đã tải {0} số đo từ hệ thống.",
    "Unsaved changes": "Có thay đổi chưa lưu", "Cannot read the pixel values: {0}": "Không đọc được giá trị điểm ảnh: {0}",
    "length": "độ dài", "angle": "góc", "ellipse": "elip", "rectangle": "chữ nhật", "Im {0}": "Ảnh {0}",
    "L, A, E, B": "L, A, E, B", "length, angle, elliptical and rectangular ROI": "độ dài, góc, vùng elip và chữ nhật",
    "Click a measurement, Delete": "Bấm vào số đo, Delete", "select it, delete it": "chọn, xoá",
    "PixelSpacing": "PixelSpacing", "ImagerPixelSpacing": "ImagerPixelSpacing (đầu thu)", "US region": "vùng siêu âm",
  });

  // ---------------------------------------------------------------- calibration and values
  const tagValues = (ds, tag) => ((ds && ds[tag]) || {}).Value || [];
  const tagNum = (ds, tag, dflt) => {
    const v = parseFloat(tagValues(ds, tag)[0]);
    return Number.isFinite(v) ? v : dflt;
  };
  /** mm a pixel between rows and between columns, and the attribute it comes from (PS3.3 10.7.1.3). */
  function calibrationOf(m) {
    if (!m) return null;
    for (const [tag, source] of [["00280030", "PixelSpacing"], ["00181164", "ImagerPixelSpacing"]]) {
      const v = tagValues(m, tag).map(Number);
      if (v.length === 2 && v[0] > 0 && v[1] > 0) return { row: v[0], col: v[1], source };
    }
    for (const r of tagValues(m, "00186011")) { // Sequence of Ultrasound Regions; units 3 = cm
      const dx = tagNum(r, "0018602C");
      const dy = tagNum(r, "0018602E");
      if (tagNum(r, "00186024") === 3 && tagNum(r, "00186026") === 3 && dx && dy) {
        return { row: Math.abs(dy) * 10, col: Math.abs(dx) * 10, source: "US region" };
      }
    }
    return { row: 1, col: 1, source: "" };
  }
  P.calibrationOf = calibrationOf;

  function geometry(kind, pts, cal) {
    const mm = pts.map(([c, r]) => [c * cal.col, r * cal.row]);
    if (kind === "length") return { length: Math.hypot(mm[1][0] - mm[0][0], mm[1][1] - mm[0][1]) };
    if (kind === "angle") {
      const a1 = Math.atan2(mm[0][1] - mm[1][1], mm[0][0] - mm[1][0]);
      const a2 = Math.atan2(mm[2][1] - mm[1][1], mm[2][0] - mm[1][0]);
      let deg = Math.abs((a1 - a2) * 180 / Math.PI) % 360;
      if (deg > 180) deg = 360 - deg;
      return { angle: deg };
    }
    const w = Math.abs(mm[1][0] - mm[0][0]);
    const h = Math.abs(mm[1][1] - mm[0][1]);
    return { area: kind === "ellipse" ? Math.PI * w * h / 4 : w * h };
  }

  /** One frame's stored values (WADO-RS frames as native Explicit VR Little Endian, PS3.18 10.4.1.1.5). */
  const raw = new Map(); // "sop|frame" -> promise of {arr, rows, cols}; a few kept
  function rawFrame(study, series, sop, frame, m) {
    const key = `${sop}|${frame}`;
    if (raw.has(key)) return raw.get(key);
    const p = (async () => {
      const url = `${P.ROOT}studies/${study}/series/${series}/instances/${sop}/frames/${frame}`;
      const res = await P.request(url, { headers: { Accept: NATIVE } });
      const buf = new Uint8Array(await res.arrayBuffer());
      const boundary = (/boundary="?([^";]+)"?/.exec(res.headers.get("content-type") || "") || [])[1];
      if (!boundary) throw new Error("no multipart boundary");
      const start = find(buf, "\r\n\r\n", 0) + 4;
      const end = findLast(buf, `\r\n--${boundary}`);
      const data = buf.slice(start, end > start ? end : buf.length);
      const bits = tagNum(m, "00280100", 16);
      const signed = tagNum(m, "00280103", 0) === 1;
      const Arr = bits === 8 ? (signed ? Int8Array : Uint8Array) : (signed ? Int16Array : Uint16Array);
      return { arr: new Arr(data.buffer, 0, Math.floor(data.length / Arr.BYTES_PER_ELEMENT)),
        rows: tagNum(m, "00280010"), cols: tagNum(m, "00280011") };
    })();
    raw.set(key, p);
    p.catch(() => raw.delete(key));
    while (raw.size > 4) raw.delete(raw.keys().next().value);
    return p;
  }
  function find(buf, s, from) {
    const b = [...s].map((c) => c.charCodeAt(0));
    outer: for (let i = from; i <= buf.length - b.length; i++) {
      for (let j = 0; j < b.length; j++) if (buf[i + j] !== b[j]) continue outer;
      return i;
    }
    return -1;
  }
  function findLast(buf, s) {
    const b = [...s].map((c) => c.charCodeAt(0));
    outer: for (let i = buf.length - b.length; i >= 0; i--) {
      for (let j = 0; j < b.length; j++) if (buf[i + j] !== b[j]) continue outer;
      return i;
    }
    return -1;
  }
  /** Mean, SD, min, max of the pixels whose centres are inside the ROI, Rescale Slope/Intercept applied. */
  function statistics(kind, pts, frame, m) {
    const slope = tagNum(m, "00281053", 1);
    const intercept = tagNum(m, "00281052", 0);
    const [cl, cr] = [Math.min(pts[0][0], pts[1][0]), Math.max(pts[0][0], pts[1][0])];
    const [rt, rb] = [Math.min(pts[0][1], pts[1][1]), Math.max(pts[0][1], pts[1][1])];
    const a = Math.max((cr - cl) / 2, 1e-6);
    const b = Math.max((rb - rt) / 2, 1e-6);
    const [cx, cy] = [(cl + cr) / 2, (rt + rb) / 2];
    let n = 0;
    let sum = 0;
    let sum2 = 0;
    let min = Infinity;
    let max = -Infinity;
    for (let r = Math.max(0, Math.floor(rt)); r < Math.min(frame.rows, Math.ceil(rb)); r++) {
      const y = r + 0.5;
      if (y < rt || y > rb) continue;
      for (let c = Math.max(0, Math.floor(cl)); c < Math.min(frame.cols, Math.ceil(cr)); c++) {
        const x = c + 0.5;
        if (x < cl || x > cr) continue;
        if (kind === "ellipse" && ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 > 1) continue;
        const v = frame.arr[r * frame.cols + c] * slope + intercept;
        n++;
        sum += v;
        sum2 += v * v;
        if (v < min) min = v;
        if (v > max) max = v;
      }
    }
    if (!n) return {};
    const mean = sum / n;
    return { mean, sd: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), min, max };
  }

  // ---------------------------------------------------------------- the measurements
  const state = { items: [], selected: null, dirty: false, pending: null, seq: 0 };
  const uid = () => `2.25.${BigInt(`0x${[...crypto.getRandomValues(new Uint8Array(16))]
    .map((x) => x.toString(16).padStart(2, "0")).join("")}`).toString()}`;

  async function instanceMeta(v, item) {
    const m = v.meta.get(item.sop);
    if (m) return m;
    const base = `${P.ROOT}studies/${item.study}/series/${item.series}/instances/${item.sop}`;
    return (await P.getJson(`${base}/metadata`))[0];
  }

  /** Values of a measurement drawn on viewport `v`: geometry at once, ROI statistics after the pixels. */
  async function compute(v, item) {
    const m = await instanceMeta(v, item);
    const cal = calibrationOf(m);
    const unit = cal.source ? "mm" : "px";
    item.calibration = cal.source;
    item.values = geometry(item.kind, item.points, cal);
    item.units = { length: unit, area: `${unit}2`, angle: "deg" };
    const mono = tagNum(m, "00280002", 1) === 1;
    if ((item.kind === "ellipse" || item.kind === "rectangle") && mono) {
      try {
        const frame = await rawFrame(item.study, item.series, item.sop, item.frame, m);
        Object.assign(item.values, statistics(item.kind, item.points, frame, m));
        const hu = tagValues(m, "00080060")[0] === "CT" && tagValues(m, "00281052").length > 0;
        for (const k of ["mean", "sd", "min", "max"]) item.units[k] = hu ? "HU" : "";
      } catch (e) {
        P.status(t("Cannot read the pixel values: {0}", e.message));
      }
    }
  }

  const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "?");
  const UNIT_TEXT = { mm: "mm", px: "px", mm2: "mm²", px2: "px²", deg: "°", HU: "HU", "": "" };
  function labelLines(item) {
    const v = item.values || {};
    const u = (k) => UNIT_TEXT[(item.units || {})[k] ?? ""] ?? "";
    if (item.kind === "length") return [`${fmt(v.length)} ${u("length")}`];
    if (item.kind === "angle") return [`${fmt(v.angle)}°`];
    const out = [];
    if (v.mean !== undefined) {
      out.push(`${t("Mean")} ${fmt(v.mean)} ${u("mean")}  ${t("SD")} ${fmt(v.sd)}`.replace(/\s+$/, ""));
      out.push(`${t("Min")} ${fmt(v.min, 0)} / ${t("Max")} ${fmt(v.max, 0)}`);
    }
    if (v.area !== undefined) out.push(`${t("Area")} ${fmt(v.area)} ${u("area")}`);
    return out;
  }

  // ---------------------------------------------------------------- drawing (SVG over each viewport)
  function svg(tag, attrs = {}, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, String(v));
    for (const c of children) if (c != null) e.append(c);
    return e;
  }
  function shape(v, item, live = false) {
    const s = item.points.map((p) => v.toScreen(p));
    const g = svg("g", { class: `mark${state.selected === item.uid ? " sel" : ""}${live ? " live" : ""}`,
      "data-mark": item.uid, "data-kind": item.kind });
    const both = (tag, attrs) => [svg(tag, { ...attrs, class: "hit" }), svg(tag, { ...attrs, class: "line" })];
    let at = s[s.length - 1];
    if (item.kind === "length" || item.kind === "angle") {
      g.append(...both("polyline", { points: s.map((p) => p.join(",")).join(" ") }));
      for (const p of s) g.append(svg("circle", { class: "handle", cx: p[0], cy: p[1], r: 3 }));
      if (item.kind === "angle" && s.length > 1) at = s[1];
    } else {
      const [x0, x1] = [Math.min(s[0][0], s[1][0]), Math.max(s[0][0], s[1][0])];
      const [y0, y1] = [Math.min(s[0][1], s[1][1]), Math.max(s[0][1], s[1][1])];
      g.append(...(item.kind === "ellipse"
        ? both("ellipse", { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, rx: (x1 - x0) / 2, ry: (y1 - y0) / 2 })
        : both("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })));
      at = [x1, y1];
    }
    if (!live && item.values) {
      const lines = labelLines(item);
      const label = svg("text", { class: "label", x: at[0] + 8, y: at[1] + 4 },
        ...lines.map((l, n) => svg("tspan", { x: at[0] + 8, dy: n ? "1.2em" : 0 }, l)));
      g.append(label);
    }
    return g;
  }
  function render(v) {
    const it = v.stack[v.index];
    const mine = it && v.img.dataset.index !== "placeholder"
      ? state.items.filter((m) => m.sop === it.sop && m.frame === it.frame) : [];
    const pend = state.pending && state.pending.v === v ? [state.pending.item] : [];
    if (!mine.length && !pend.length && !v.svg.firstChild) return; // nothing drawn, nothing to draw: a cheap scroll
    v.svg.replaceChildren(...mine.map((m) => shape(v, m)), ...pend.map((m) => shape(v, m, true)));
  }
  const renderAll = () => P.viewports.forEach(render);

  function renderList() {
    const list = $("#measure-list");
    const cur = P.current;
    const mine = state.items.filter((m) => cur && m.study === cur.uid);
    list.replaceChildren(...mine.map((m, n) => {
      const s = P.findSeries(m.series);
      const where = s ? `${s.modality} ${P.text(s.ds, "SeriesNumber")}` : "";
      const cal = m.calibration ? ` (${t(m.calibration)})` : "";
      const btn = el("button", {
        type: "button", class: "measure-item", "data-mark": m.uid, "aria-pressed": String(state.selected === m.uid),
        onclick: () => goTo(m),
      }, el("strong", {}, `${n + 1}. ${t(KIND_LABEL[m.kind])}`), ` ${labelLines(m).join(" · ")}${m.kind === "length" ? cal : ""}`,
      el("span", { class: "muted" }, ` ${where}`));
      return el("li", {}, btn);
    }));
    $("#measure-empty").hidden = mine.length > 0;
    $("#measure-delete").disabled = !state.selected;
    $("#measure-save").disabled = !state.dirty || !cur;
    $("#measure-panel").dataset.dirty = String(state.dirty);
  }
  function changed({ dirty = true } = {}) {
    if (dirty) state.dirty = true;
    renderAll();
    renderList();
  }
  function select(id) {
    state.selected = id;
    changed({ dirty: false });
  }
  /** Show a measurement: select it, and bring its image into a viewport. */
  async function goTo(m) {
    select(m.uid);
    let v = P.viewports.find((x) => x.series && x.series.uid === m.series) || P.active;
    P.setActive(v);
    if (!v.series || v.series.uid !== m.series) await v.show(m.series);
    const i = v.stack.findIndex((it) => it.sop === m.sop && it.frame === m.frame);
    if (i >= 0) v.setIndex(i);
  }
  function remove(id) {
    state.items = state.items.filter((m) => m.uid !== id);
    if (state.selected === id) state.selected = null;
    changed();
  }

  /** A new measurement on viewport `v`'s current image, from its points. */
  function finish(v, item) {
    state.pending = null;
    state.items.push(item);
    state.selected = item.uid;
    changed();
    const seq = ++state.seq;
    compute(v, item).then(() => changed(), () => {}).finally(() => {
      if (seq === state.seq) $("#measure-panel").dataset.computed = item.uid;
    });
  }
  function newItem(v, kind, p) {
    const it = v.stack[v.index];
    return { uid: uid(), kind, study: v.study.uid, series: v.series.uid, sop: it.sop, frame: it.frame, points: [p, p] };
  }

  /** The viewport's pointerdown, for measurement tools and selection: "handled", a drag, or undefined. */
  function pointerDown(v, ev, mode) {
    const hit = ev.target.closest && ev.target.closest("g[data-mark]");
    if (hit && !hit.classList.contains("live")) {
      select(hit.dataset.mark);
      return "handled";
    }
    if (!TOOLS.includes(mode) || !v.stack.length || v.img.hidden) {
      if (state.selected) select(null);
      return undefined;
    }
    const p = v.toImage(ev.clientX, ev.clientY);
    if (mode === "angle") {
      const pend = state.pending;
      if (pend && pend.v === v && pend.item.kind === "angle") {
        pend.item.points.splice(pend.item.points.length - 1, 1, p, p);
      } else {
        state.pending = { v, item: { ...newItem(v, "angle", p), points: [p, p] } };
      }
      const item = state.pending.item;
      if (item.points.length > 3) {
        item.points.length = 3;
        finish(v, item);
        return "handled";
      }
      render(v);
      return {
        move(e) {
          item.points[item.points.length - 1] = v.toImage(e.clientX, e.clientY);
          render(v);
        },
        end(e, moved) {
          if (!moved || state.pending?.item !== item) return;
          item.points[item.points.length - 1] = v.toImage(e.clientX, e.clientY);
          item.points.push(item.points[item.points.length - 1]);
          if (item.points.length > 3) {
            item.points.length = 3;
            finish(v, item);
          } else render(v);
        },
        cancel() {
          state.pending = null;
          render(v);
        },
      };
    }
    const item = newItem(v, mode, p);
    state.pending = { v, item };
    return {
      move(e) {
        item.points[1] = v.toImage(e.clientX, e.clientY);
        render(v);
      },
      end(e, moved) {
        item.points[1] = v.toImage(e.clientX, e.clientY);
        const s0 = v.toScreen(item.points[0]);
        const s1 = v.toScreen(item.points[1]);
        if (!moved || Math.hypot(s1[0] - s0[0], s1[1] - s0[1]) < 4) {
          state.pending = null; // a click, not a measurement
          render(v);
          return;
        }
        finish(v, item);
      },
      cancel() {
        state.pending = null;
        render(v);
      },
    };
  }

  // ---------------------------------------------------------------- the archive: save as SR, load back
  async function save() {
    const cur = P.current;
    if (!cur) return;
    const mine = state.items.filter((m) => m.study === cur.uid);
    const body = {
      study: cur.uid,
      measurements: mine.map((m) => ({ kind: m.kind, series: m.series, sop: m.sop, frame: m.frame,
        points: m.points, uid: m.uid, label: m.label || "" })),
    };
    const st = $("#measure-status");
    st.textContent = t("Saving…");
    $("#measure-save").disabled = true;
    try {
      const res = await P.request(`${API}sr`, {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const saved = await res.json();
      for (const s of saved.measurements) { // the archive's values are the ones in the report
        const m = state.items.find((x) => x.uid === s.uid);
        if (m) Object.assign(m, { values: s.values, units: s.units, calibration: s.calibration, label: s.label });
      }
      state.dirty = false;
      st.textContent = t("Saved in the archive (DICOM SR).");
      $("#measure-panel").dataset.saved = saved.sop;
      changed({ dirty: false });
    } catch (e) {
      st.textContent = t("Cannot save: {0}", e.message);
      renderList();
    }
  }
  async function load(study, { quiet = false } = {}) {
    try {
      const res = await P.request(`${API}${study.uid}`, { headers: { Accept: "application/json" } });
      const body = await res.json();
      if (!P.studies.has(study.uid)) return; // the study was closed meanwhile
      state.items = state.items.filter((m) => m.study !== study.uid);
      for (const m of body.measurements) state.items.push({ ...m, study: study.uid });
      if (!quiet && body.measurements.length) {
        $("#measure-status").textContent = t("{0} measurements loaded from the archive.", body.measurements.length);
      }
      $("#measure-panel").dataset.loaded = study.uid;
      changed({ dirty: false });
    } catch (e) {
      if (!quiet) $("#measure-status").textContent = t("Cannot load the measurements: {0}", e.message);
    }
  }

  // ---------------------------------------------------------------- wiring
  hooks.on("viewChanged", render);
  hooks.on("metadata", render);
  hooks.on("studyOpened", (st) => {
    state.dirty = false;
    load(st);
  });
  hooks.on("priorOpened", (st) => load(st, { quiet: true }));
  hooks.on("studyClosed", () => {
    Object.assign(state, { items: [], selected: null, dirty: false, pending: null });
    $("#measure-status").textContent = "";
    for (const k of ["loaded", "saved", "computed"]) delete $("#measure-panel").dataset[k];
    renderAll();
    renderList();
  });
  hooks.on("tool", () => {
    if (state.pending) {
      const { v } = state.pending;
      state.pending = null;
      render(v);
    }
  });
  hooks.on("key", (ev) => {
    if ((ev.key === "Delete" || ev.key === "Backspace") && state.selected) {
      remove(state.selected);
      return true;
    }
    if (ev.key === "Escape" && (state.pending || state.selected)) {
      const v = state.pending && state.pending.v;
      state.pending = null;
      select(null);
      if (v) render(v);
      return true;
    }
    return false;
  });
  Object.assign(P.TOOL_KEYS, { l: "length", a: "angle", e: "ellipse", b: "rectangle" });
  $("#measure-delete").addEventListener("click", () => state.selected && remove(state.selected));
  $("#measure-save").addEventListener("click", save);
  P.measure = {
    pointerDown, save, calibrationOf,
    items: () => state.items.map((m) => ({ ...m })),
    get selected() {
      return state.selected;
    },
  };
})();
