/* "Studies at other facilities" (issue 18): a panel beside the study list and the study view that
 * asks every peer facility at once (GET api/reuse/studies?identifier=system|value), shows what each
 * answered (and which did not, within the deadline), opens a peer's study in this viewer through
 * the WADO-RS proxy (reuse/peers/{peer}/#/study/{uid}) and imports it into this archive. Studies
 * imported from elsewhere are labelled in the study list. Vanilla JS beside viewer.js, which it
 * does not touch: it reads the same token (sessionStorage) and language (localStorage). */
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const APP = new URL(meta("reuse-peer") ? "../../../" : "./", document.baseURI).href;
  const API = `${APP}api/reuse/`;
  const FHIR = `${APP}fhir/`;
  const PEER = meta("reuse-peer"); // set on the viewer page of a peer's study
  const VI = {
    "Studies at other facilities": "Ca chụp ở cơ sở khác",
    "Patient identifier": "Mã định danh người bệnh",
    "CCCD (12 digits)": "CCCD (12 số)", "BHYT card": "Thẻ BHYT", "system|value": "system|value",
    "Search other facilities": "Tìm ở cơ sở khác", "Searching other facilities…": "Đang hỏi các cơ sở khác…",
    "Facility": "Cơ sở", "Study date": "Ngày chụp", "Modality": "Loại máy", "Description": "Mô tả",
    "Images": "Ảnh", "Status": "Trạng thái", "View": "Xem", "Import": "Nhập về", "Importing…": "Đang nhập…",
    "in this archive": "đã có ở đây", "imported": "đã nhập về", "from another facility": "từ cơ sở khác",
    "No studies at other facilities.": "Không có ca chụp nào ở cơ sở khác.",
    "{0} did not answer: {1}": "{0} không trả lời: {1}", "Search failed: {0}": "Không tìm được: {0}",
    "Import failed: {0}": "Không nhập được: {0}", "Imported: {0} images.": "Đã nhập: {0} ảnh.",
    "Study from another facility: {0}": "Ca chụp của cơ sở khác: {0}",
    "Import into this archive": "Nhập vào hệ thống này", "← Our studies": "← Ca chụp của cơ sở mình",
    "{0} studies at {1} facilities": "{0} ca chụp ở {1} cơ sở",
  };
  const LANG = (localStorage.getItem("pacs.lang") || navigator.language || "en").toLowerCase().startsWith("vi")
    ? "vi" : "en";
  const t = (key, ...args) => ((LANG === "vi" && VI[key]) || key).replace(/\{(\d)\}/g, (_, n) => String(args[+n]));
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };
  const first = (ds, tag) => (((ds || {})[tag] || {}).Value || [])[0];
  const fmtDate = (d) => (/^\d{8}$/.test(d || "") ? `${d.slice(6, 8)}/${d.slice(4, 6)}/${d.slice(0, 4)}` : d || "");

  async function api(url, opts = {}) {
    const headers = new Headers(opts.headers || {});
    const token = sessionStorage.getItem("pacs.token");
    if (token) headers.set("Authorization", `Bearer ${token}`);
    headers.set("Accept", "application/json, application/fhir+json");
    const res = await fetch(url, { ...opts, headers });
    let body = null;
    try {
      body = await res.json();
    } catch {
      /* no JSON body */
    }
    if (!res.ok) {
      const issue = ((body || {}).issue || [])[0] || {};
      throw new Error(`${res.status}: ${(body && (body.detail || issue.diagnostics)) || res.statusText}`);
    }
    return body;
  }

  document.head.append(el("style", {}, `
    .reuse { border: 1px solid var(--line, #333); border-radius: 4px; padding: .5rem .75rem; }
    .reuse h2 { font-size: 1rem; margin: 0 0 .4rem; }
    .reuse form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: flex-end; }
    .reuse table { width: 100%; border-collapse: collapse; margin-top: .4rem; }
    .reuse td, .reuse th { padding: .25rem .5rem; text-align: left; border-bottom: 1px solid var(--line, #333); }
    .reuse .warn { color: var(--danger, #f77); margin: .3rem 0 0; }
    .reuse-badge { margin-left: .4rem; padding: 0 .35rem; border-radius: 3px; font-size: .8em;
      background: #5a3f0a; color: #ffd98a; white-space: nowrap; }
    .reuse-banner { display: flex; gap: 1rem; align-items: center; padding: .4rem 1rem;
      background: #3d2a05; color: #ffe2a8; }
    .strip .reuse { margin-top: .5rem; font-size: .85rem; }
  `));

  // ------------------------------------------------------------ the panel
  function panel(id, compact) {
    const table = el("table", { hidden: true },
      el("thead", {}, el("tr", {}, ...["Facility", "Study date", "Modality", "Description", "Images", "Status", ""]
        .filter((h, i) => !compact || i !== 3).map((h) => el("th", { scope: "col" }, t(h))))),
      el("tbody"));
    const state = el("p", { class: "reuse-state", role: "status", "aria-live": "polite" });
    const warn = el("div", { class: "warn" });
    const input = el("input", { name: "identifier", type: "search", spellcheck: "false",
      placeholder: "079080001234", "aria-label": t("Patient identifier") });
    const system = el("select", { name: "system", "aria-label": t("Patient identifier") },
      el("option", { value: "urn:vn:cccd" }, t("CCCD (12 digits)")),
      el("option", { value: "urn:vn:bhyt" }, t("BHYT card")),
      el("option", { value: "" }, t("system|value")));
    const form = el("form", { role: "search", onsubmit: (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (v) run(box, [system.value && !v.includes("|") ? `${system.value}|${v}` : v]);
    } }, el("label", {}, t("Patient identifier"), system), input,
    el("button", { type: "submit", class: "btn" }, t("Search other facilities")));
    const box = compact
      ? el("details", { id, class: "reuse", open: true }, el("summary", {}, t("Studies at other facilities")),
        state, warn, table)
      : el("section", { id, class: "reuse", "aria-labelledby": `${id}-title` },
        el("h2", { id: `${id}-title` }, t("Studies at other facilities")), form, state, warn, table);
    Object.assign(box, { table, state, warn, input, compact });
    return box;
  }

  let seq = 0;
  async function run(box, tokens) {
    const mine = ++seq;
    box.dataset.done = "";
    box.state.textContent = t("Searching other facilities…");
    box.warn.replaceChildren();
    const q = new URLSearchParams();
    for (const tok of tokens) q.append("identifier", tok);
    let body;
    try {
      body = await api(`${API}studies?${q}`);
    } catch (e) {
      if (mine !== seq) return;
      box.state.textContent = t("Search failed: {0}", e.message);
      box.dataset.done = "error";
      return;
    }
    if (mine !== seq) return;
    const rows = body.studies.map((s) => row(s, tokens[0], box.compact));
    box.table.tBodies[0].replaceChildren(...rows);
    box.table.hidden = !rows.length;
    const facilities = new Set(body.studies.map((s) => s.facility || s.peer)).size;
    box.state.textContent = rows.length ? t("{0} studies at {1} facilities", rows.length, facilities)
      : t("No studies at other facilities.");
    box.warn.replaceChildren(...body.peers.filter((p) => p.status === "error" || p.status === "timeout")
      .map((p) => el("p", { "data-peer": p.peer }, t("{0} did not answer: {1}", p.facility || p.peer, p.detail))));
    box.dataset.done = "ok";
  }

  function row(s, token, compact) {
    const ds = s.dicom || {};
    const status = s.local ? t("in this archive") : s.imported === "done" ? t("imported") : "";
    const view = s.RetrieveURL && !s.local
      ? el("a", { class: "btn", href: `${APP}reuse/peers/${encodeURIComponent(s.peer)}/#/study/${s.StudyInstanceUID}` },
        t("View")) : null;
    const imp = !s.local && s.imported !== "done"
      ? el("button", { type: "button", class: "btn", onclick: (ev) => importStudy(ev.target, s.peer, s.StudyInstanceUID, token) },
        t("Import")) : null;
    const cells = [
      el("td", {}, s.facility || s.peer),
      el("td", {}, fmtDate(first(ds, "00080020"))),
      el("td", {}, ((ds["00080061"] || {}).Value || []).join("/")),
      compact ? null : el("td", {}, first(ds, "00081030") || ""),
      el("td", { class: "num" }, String(first(ds, "00201208") || "")),
      el("td", {}, status),
      el("td", {}, view, " ", imp),
    ];
    return el("tr", { "data-study": s.StudyInstanceUID, "data-peer": s.peer }, ...cells);
  }

  async function importStudy(btn, peer, study, identifier) {
    btn.disabled = true;
    btn.textContent = t("Importing…");
    try {
      const row = await api(`${API}import`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ peer, study, identifier }),
      });
      btn.replaceWith(t("Imported: {0} images.", row.instances));
    } catch (e) {
      btn.disabled = false;
      btn.textContent = t("Import");
      btn.after(el("span", { class: "warn" }, t("Import failed: {0}", e.message)));
    }
  }

  // ------------------------------------------------------------ where the panel goes
  const hash = () => location.hash.replace(/^#/, "") || "/";
  async function tokensOfStudy(uid) {
    const r = await api(`${FHIR}ImagingStudy/${uid}`);
    const p = (r.contained || []).find((c) => c.resourceType === "Patient") || {};
    return (p.identifier || []).filter((i) => i.system).map((i) => `${i.system}|${i.value}`);
  }
  let listPanel = null;
  let studyPanel = null;
  let shownFor = "";
  async function onRoute() {
    const h = hash();
    const [path, qs = ""] = h.split("?");
    const study = path.match(/^\/study\/([0-9.]+)$/);
    if (PEER) return;
    if (!study) {
      if (!listPanel) {
        listPanel = panel("reuse-panel", false);
        const after = $("#list-view .pager") || $("#list-view .table-wrap");
        if (after) after.after(listPanel);
      }
      const token = new URLSearchParams(qs).get("identifier");
      if (token && shownFor !== h) {
        shownFor = h;
        listPanel.input.value = token;
        listPanel.querySelector("select").value = "";
        run(listPanel, [token]);
      }
      return;
    }
    if (shownFor === h) return;
    shownFor = h;
    if (!studyPanel) {
      studyPanel = panel("reuse-study", true);
      const strip = $("#study-view .strip");
      if (strip) strip.append(studyPanel);
    }
    studyPanel.table.hidden = true;
    try {
      const tokens = await tokensOfStudy(study[1]);
      if (tokens.length) run(studyPanel, tokens.slice(0, 10));
      else studyPanel.state.textContent = t("No studies at other facilities.");
    } catch (e) {
      studyPanel.state.textContent = t("Search failed: {0}", e.message);
    }
  }

  // ------------------------------------------------------------ the viewer page of a peer's study
  function peerBanner() {
    const h = hash();
    const study = (h.match(/^\/study\/([0-9.]+)/) || [])[1];
    if (!study) {
      location.href = `${APP}#/`; // the study list is ours; a peer's archive is not browsed
      return;
    }
    if ($(".reuse-banner")) return;
    const imp = el("button", { type: "button", class: "btn",
      onclick: (ev) => importStudy(ev.target, PEER, study, "") }, t("Import into this archive"));
    document.body.prepend(el("div", { class: "reuse-banner", role: "note" },
      el("strong", {}, t("Study from another facility: {0}", PEER)), imp,
      el("a", { class: "btn", href: `${APP}#/` }, t("← Our studies"))));
  }

  // ------------------------------------------------------------ imported studies labelled in the list
  const labelled = new Map(); // study UID -> provenance row or null
  async function labelRows() {
    const rows = [...document.querySelectorAll("#studies tbody tr[data-study]")];
    const ask = rows.map((r) => r.dataset.study).filter((u) => !labelled.has(u));
    if (ask.length) {
      try {
        const body = await api(`${API}imports?study=${ask.slice(0, 200).join(",")}`);
        for (const u of ask) labelled.set(u, null);
        for (const r of body.imports) labelled.set(r.study_instance_uid, r);
      } catch {
        return; // signed out, or no access: no labels
      }
    }
    for (const r of rows) {
      const prov = labelled.get(r.dataset.study);
      if (prov && !r.querySelector(".reuse-badge") && r.cells[0]) {
        r.cells[0].append(el("span", { class: "reuse-badge", title: prov.peer },
          `${t("from another facility")}: ${prov.facility_code || prov.peer}`));
      }
    }
  }

  window.addEventListener("hashchange", PEER ? peerBanner : onRoute);
  if (PEER) peerBanner();
  else {
    onRoute();
    const tbody = $("#studies tbody");
    if (tbody) new MutationObserver(() => labelRows()).observe(tbody, { childList: true });
  }
})();
