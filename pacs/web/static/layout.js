/* PACS viewer, layouts and comparison: 1x1, 1x2 and 2x2 viewports, "compare with prior" (the
 * patient's most recent earlier study of the same modality, QIDO-RS), and scrolling the viewports
 * together by slice position along the normal: directly within one Frame of Reference, across
 * Frames of Reference (a prior) by the offset the slices had when they were linked. */
"use strict";
(() => {
  const P = window.PACS;
  const { $, t, hooks } = P;
  Object.assign(P.VI, {
    "Layout": "Bố cục", "Compare with prior": "So sánh ca cũ", "Sync": "Đồng bộ",
    "Open the patient's previous study of this modality beside this one (C)":
      "Mở ca chụp trước cùng loại máy của bệnh nhân cạnh ca này (C)",
    "Scroll the images together by slice position (S)": "Cuộn các khung ảnh cùng nhau theo vị trí lát cắt (S)",
    "No earlier {0} study of this patient.": "Bệnh nhân không có ca {0} nào trước đây.",
    "Looking for the prior study…": "Đang tìm ca chụp trước…", "Prior: {0}": "Ca trước: {0}",
    "Cannot open the prior study: {0}": "Không mở được ca chụp trước: {0}",
    "C, S": "C, S", "compare with prior, synchronized scrolling": "so sánh ca cũ, cuộn đồng bộ",
  });
  const COUNTS = { "1x1": 1, "1x2": 2, "2x2": 4 };
  let layout = "1x1";
  const visible = () => P.viewports.slice(0, COUNTS[layout]);

  /** Show `name` viewports; new ones get the study's next image series. */
  function setLayout(name, { fill = true } = {}) {
    if (!COUNTS[name]) return;
    layout = name;
    $("#viewports").dataset.layout = name;
    for (const b of document.querySelectorAll(".layout")) b.setAttribute("aria-pressed", String(b.dataset.layout === name));
    while (P.viewports.length < COUNTS[name]) P.addViewport();
    P.viewports.forEach((v, n) => {
      const on = n < COUNTS[name];
      if (!on && !v.root.hidden) v.close();
      v.root.hidden = !on;
    });
    if (P.active.root.hidden) P.setActive(P.viewports[0]);
    const cur = P.current;
    if (fill && cur) {
      const images = cur.seriesList.filter((s) => !P.NON_IMAGE.has(s.modality));
      const used = new Set(visible().filter((v) => v.series).map((v) => v.series.uid));
      for (const v of visible()) {
        if (v.series || !images.length) continue;
        const next = images.find((s) => !used.has(s.uid)) || images[0];
        used.add(next.uid);
        v.show(next.uid);
      }
    }
    requestAnimationFrame(() => visible().forEach((v) => v.stack.length && v.view.fitted && v.fit()));
  }

  // ---------------------------------------------------------------- compare with prior
  const daTm = (ds) => `${P.first(ds, "StudyDate") || ""}${(P.first(ds, "StudyTime") || "").slice(0, 6)}`;
  /** The patient's most recent study of `modality` before the current one (QIDO-RS, PS3.18 10.6). */
  async function findPrior(cur, modality) {
    const q = new URLSearchParams({ PatientID: P.first(cur.ds, "PatientID") || "", ModalitiesInStudy: modality });
    const date = P.first(cur.ds, "StudyDate");
    if (date) q.set("StudyDate", `-${date}`);
    q.set("includefield", "StudyTime,StudyDescription,ModalitiesInStudy");
    const rows = await P.getJson(`${P.ROOT}studies?${q}`);
    const before = rows.filter((r) => P.first(r, "StudyInstanceUID") !== cur.uid && daTm(r) < daTm(cur.ds));
    before.sort((a, b) => daTm(b).localeCompare(daTm(a)));
    return before[0];
  }
  async function compareWithPrior() {
    const cur = P.current;
    const v0 = P.viewports[0];
    if (!cur || !v0.series) return;
    const modality = v0.series.modality;
    P.status(t("Looking for the prior study…"));
    try {
      const row = await findPrior(cur, modality);
      if (P.current !== cur) return;
      if (!row) {
        P.status(t("No earlier {0} study of this patient.", modality));
        return;
      }
      const st = await P.loadStudy(P.first(row, "StudyInstanceUID"));
      if (P.current !== cur) return;
      st.prior = true;
      $("#prior-strip").hidden = false;
      $("#prior-date").textContent = [P.fmtDate(P.first(st.ds, "StudyDate")), P.text(st.ds, "StudyDescription")]
        .filter(Boolean).join(" · ");
      P.renderStrip($("#prior-list"), st);
      hooks.emit("priorOpened", st);
      const words = new Set((P.text(v0.series.ds, "SeriesDescription") || "").toLowerCase().split(/\s+/));
      const same = st.seriesList.filter((s) => s.modality === modality);
      same.sort((a, b) => score(b) - score(a));
      function score(s) {
        return (P.text(s.ds, "SeriesDescription") || "").toLowerCase().split(/\s+/).filter((w) => words.has(w)).length;
      }
      const pick = same[0] || st.seriesList.find((s) => !P.NON_IMAGE.has(s.modality));
      if (layout === "1x1") setLayout("1x2", { fill: false });
      const v1 = P.viewports[1];
      P.status(t("Prior: {0}", $("#prior-date").textContent));
      const frac = v0.stack.length > 1 ? v0.index / (v0.stack.length - 1) : 0;
      await v1.show(pick.uid);
      v1.setIndex(Math.round(frac * (v1.stack.length - 1)), { quiet: true });
      setSync(true);
    } catch (e) {
      P.status(t("Cannot open the prior study: {0}", e.message));
    }
  }

  // ---------------------------------------------------------------- synchronized scrolling
  const sync = { on: false, offsets: new Map(), busy: false };
  const geom = (v, i = v.index) => v.positions && v.positions[i];
  const parallel = (a, b) => Math.abs(a.normal[0] * b.normal[0] + a.normal[1] * b.normal[1] + a.normal[2] * b.normal[2]) > 0.99;
  const sameFrame = (a, b) => a.frameOfReference && a.frameOfReference === b.frameOfReference;
  function nearest(v, pos) {
    let best = -1;
    let d = Infinity;
    v.positions.forEach((g, i) => {
      if (g && Math.abs(g.pos - pos) < d) {
        d = Math.abs(g.pos - pos);
        best = i;
      }
    });
    return best;
  }
  /** Pairs in different Frames of Reference keep the offset their slices have now. */
  function link() {
    for (const a of visible()) {
      for (const b of visible()) {
        if (a === b || !geom(a) || !geom(b) || sameFrame(a, b)) continue;
        const key = `${a.series.uid}|${b.series.uid}`;
        if (!sync.offsets.has(key)) sync.offsets.set(key, geom(b).pos - geom(a).pos);
      }
    }
  }
  function follow(src) {
    if (!sync.on || sync.busy || !geom(src)) return;
    const g = geom(src);
    sync.busy = true;
    try {
      for (const v of visible()) {
        if (v === src || !v.series || !geom(v) || !parallel(g, geom(v))) continue;
        let target = g.pos;
        if (!sameFrame(src, v)) {
          const off = sync.offsets.get(`${src.series.uid}|${v.series.uid}`);
          if (off === undefined) continue;
          target += off;
        }
        const i = nearest(v, target);
        if (i >= 0 && i !== v.index) v.setIndex(i);
      }
    } finally {
      sync.busy = false;
    }
  }
  function setSync(on) {
    sync.on = on;
    sync.offsets.clear();
    $("#sync").setAttribute("aria-pressed", String(on));
    if (on) {
      link();
      follow(P.active);
    }
  }

  hooks.on("scrolled", follow);
  hooks.on("metadata", (v) => {
    if (!sync.on) return;
    link();
    const other = visible().find((x) => x !== v && sameFrame(x, v) && geom(x));
    if (other) follow(other); // a new series in the same frame joins at the same position
  });
  hooks.on("studyClosed", () => {
    setSync(false);
    setLayout("1x1", { fill: false });
    $("#prior-strip").hidden = true;
  });
  hooks.on("key", (ev) => {
    if (ev.key === "c" || ev.key === "C") compareWithPrior();
    else if (ev.key === "s" || ev.key === "S") $("#sync").click();
    else return false;
    return true;
  });
  for (const b of document.querySelectorAll(".layout")) b.addEventListener("click", () => setLayout(b.dataset.layout));
  $("#compare").addEventListener("click", compareWithPrior);
  $("#sync").addEventListener("click", () => setSync(!sync.on));
  P.layout = { setLayout, compareWithPrior, setSync, get name() { return layout; }, get sync() { return sync.on; } };
})();
