/* PACS web viewer: study list (QIDO-RS) and stack viewer (WADO-RS rendered), PS3.18.
 * Vanilla JS, no build step, no external assets. Uses only standard DICOMweb endpoints, so
 * anything it does another DICOMweb client (OHIF, dicomweb-client) can do too. */
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const meta = (name, dflt) => (document.querySelector(`meta[name="${name}"]`) || {}).content || dflt;
  const ROOT = new URL(meta("dicomweb-root", "dicom-web").replace(/\/?$/, "/"), document.baseURI).href;
  const LOGIN_URL = new URL(meta("login-url", "api/auth/login"), document.baseURI).href;
  const FHIR = new URL(meta("fhir-base", "fhir").replace(/\/?$/, "/"), document.baseURI).href;
  const PAGE_SIZE = 25;
  const NON_IMAGE = new Set(["SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "DOC"]);
  /** CT windows, keys 1-9: [id, name, level (centre), width] in HU. */
  const CT_PRESETS = [
    ["brain", "Brain", 40, 80],
    ["subdural", "Subdural", 75, 215],
    ["stroke", "Stroke", 40, 40],
    ["lung", "Lung", -600, 1500],
    ["bone", "Bone", 500, 2000],
    ["abdomen", "Abdomen", 40, 400],
    ["liver", "Liver", 60, 160],
    ["mediastinum", "Mediastinum", 50, 350],
    ["temporal", "Temporal bone", 600, 2800],
  ];

  // ------------------------------------------------------------ DICOM JSON (PS3.18 Annex F)
  const TAG = {
    PatientName: "00100010", PatientID: "00100020", PatientBirthDate: "00100030", PatientSex: "00100040",
    StudyInstanceUID: "0020000D", StudyDate: "00080020", StudyTime: "00080030", AccessionNumber: "00080050",
    StudyDescription: "00081030", ModalitiesInStudy: "00080061", NumberOfStudyRelatedSeries: "00201206",
    NumberOfStudyRelatedInstances: "00201208", SeriesInstanceUID: "0020000E", Modality: "00080060",
    SeriesNumber: "00200011", SeriesDescription: "0008103E", NumberOfSeriesRelatedInstances: "00201209",
    SOPInstanceUID: "00080018", InstanceNumber: "00200013", Rows: "00280010", Columns: "00280011",
    NumberOfFrames: "00280008", WindowCenter: "00281050", WindowWidth: "00281051", SliceLocation: "00201041",
    ImagePositionPatient: "00200032", SliceThickness: "00180050", FrameTime: "00181063", CineRate: "00180040",
    RecommendedDisplayFrameRate: "00082144", InstitutionName: "00080080", PhotometricInterpretation: "00280004",
    ImageOrientationPatient: "00200037", FrameOfReferenceUID: "00200052",
  };
  const values = (ds, kw) => ((ds && ds[TAG[kw]]) || {}).Value || [];
  const first = (ds, kw) => values(ds, kw)[0];
  const num = (ds, kw) => {
    const v = parseFloat(first(ds, kw));
    return Number.isFinite(v) ? v : undefined;
  };
  /** A person name for display: family, middle, given (Vietnamese order: "Nguyễn Văn An"). */
  function personName(v) {
    if (v == null) return "";
    const s = typeof v === "string" ? v : v.Alphabetic || v.Ideographic || v.Phonetic || "";
    const [family = "", given = "", middle = "", prefix = "", suffix = ""] = s.split("^");
    return [prefix, family, middle, given, suffix].map((x) => x.trim()).filter(Boolean).join(" ");
  }
  const text = (ds, kw) => {
    const vs = values(ds, kw);
    return vs.map((v) => (typeof v === "object" && v !== null ? personName(v) : String(v))).join("\\");
  };
  const fmtDate = (d) => (/^\d{8}$/.test(d || "") ? `${d.slice(6, 8)}/${d.slice(4, 6)}/${d.slice(0, 4)}` : d || "");
  const fmtTime = (t) => (/^\d{4}/.test(t || "") ? `${t.slice(0, 2)}:${t.slice(2, 4)}` : "");
  const isoToDa = (iso) => (iso || "").replace(/-/g, "");
  const daToIso = (da) => (/^\d{8}$/.test(da || "") ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : "");
  const localIso = (d) =>
    `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }
  const status = (msg) => {
    $("#status").textContent = msg || "";
  };

  // ------------------------------------------------------------ Language: Vietnamese or English
  // Static text is translated by walking the page once; messages go through t(). Keys are the English.
  const VI = {
    "Skip to content": "Bỏ qua, đến nội dung", "Sign out": "Đăng xuất", "Patient name": "Họ tên",
    "Patient ID": "Mã BN", "Accession": "Mã chỉ định", "From": "Từ ngày", "To": "Đến ngày",
    "Modality": "Loại máy", "Any": "Tất cả", "Search": "Tìm", "Today": "Hôm nay", "Last 7 days": "7 ngày qua",
    "Any date": "Mọi ngày", "Clear": "Xoá", "Birth date": "Ngày sinh", "Sex": "Giới", "Study date": "Ngày chụp",
    "Description": "Mô tả", "Series": "Loạt", "Images": "Ảnh", "← Previous": "← Trang trước",
    "Next →": "Trang sau →", "← Studies": "← Danh sách", "Studies": "Danh sách ca chụp",
    "Studies, newest first": "Ca chụp, mới nhất trước", "Pages": "Trang", "Study": "Ca chụp",
    "Image tools": "Công cụ ảnh", "Mouse tool": "Công cụ chuột", "Pan": "Di chuyển", "Zoom": "Phóng to",
    "Window": "Cửa sổ", "Window preset": "Cửa sổ mẫu", "Invert": "Đảo màu", "Fit": "Vừa khung",
    "Reset": "Đặt lại", "▶ Cine": "▶ Phát", "❚❚ Pause": "❚❚ Dừng", "Lossless": "Ảnh gốc", "Slice": "Lát cắt",
    "Sign in": "Đăng nhập", "User name": "Tên đăng nhập", "Password": "Mật khẩu", "Close": "Đóng",
    "Keyboard and mouse": "Bàn phím và chuột", "previous / next slice": "lát trước / lát sau",
    "Drag (W/L tool)": "Kéo (công cụ W/L)", "window: left-right width, up-down level":
      "cửa sổ: trái-phải độ rộng, lên-xuống mức", "pan": "di chuyển", "zoom": "phóng to",
    "CT presets: brain, subdural, stroke, lung, bone, abdomen, liver, mediastinum, temporal bone; 0 the header's window":
      "cửa sổ CT: não, dưới màng cứng, đột quỵ, phổi, xương, bụng, gan, trung thất, xương thái dương; 0 cửa sổ theo ảnh",
    "Subdural": "Dưới màng cứng", "Stroke": "Đột quỵ", "Liver": "Gan", "Mediastinum": "Trung thất",
    "Temporal bone": "Xương thái dương", "Prior": "Ca cũ", "Viewport {0}": "Khung ảnh {0}",
    "Cal: {0}": "Hiệu chuẩn: {0}", "Cal: none (px)": "Chưa hiệu chuẩn (px)", "Full screen": "Toàn màn hình",
    "Full screen (Shift+F)": "Toàn màn hình (Shift+F)", "Layout": "Bố cục", "Image": "Ảnh",
    "1 image": "1 ảnh", "2 images side by side": "2 ảnh cạnh nhau", "4 images": "4 ảnh",
    "Images of the prior study": "Ảnh của ca chụp trước", "Prior study": "Ca chụp trước",
    "Shift+↑ ↓, [ ]": "Shift+↑ ↓, [ ]", "previous / next series": "loạt trước / loạt sau",
    "1–9, 0": "1–9, 0", "Shift+F": "Shift+F", "full screen": "toàn màn hình",
    "Two fingers": "Hai ngón tay", "pinch to zoom, move to pan": "chụm để phóng to, kéo để di chuyển",
    "Drag a series onto an image": "Kéo một loạt vào khung ảnh", "shows it there": "hiển thị loạt đó ở khung ấy",
    "Image 1": "Ảnh 1", "Middle drag, P": "Kéo nút giữa, P",
    "Right drag, Ctrl+wheel, + −": "Kéo nút phải, Ctrl+cuộn, + −", "fit, reset, invert": "vừa khung, đặt lại, đảo màu",
    "cine play / pause": "phát / dừng", "Wheel, ↑ ↓, PgUp PgDn, Home End": "Cuộn, ↑ ↓, PgUp PgDn, Home End",
    "Brain": "Não", "Lung": "Phổi", "Bone": "Xương", "Abdomen": "Bụng", "Soft tissue": "Mô mềm",
    "Wrong user name or password.": "Sai tên đăng nhập hoặc mật khẩu.", "Sign-in failed: {0}": "Không đăng nhập được: {0}",
    "Searching…": "Đang tìm…", "Search failed: {0}": "Không tìm được: {0}", "No studies match.": "Không có ca chụp nào phù hợp.",
    "Page {0} · studies {1}–{2}": "Trang {0} · ca {1}–{2}", "Page {0}": "Trang {0}", "{0} studies": "{0} ca chụp",
    "(no name)": "(không tên)", "Loading study…": "Đang tải ca chụp…", "This study has no series.": "Ca chụp không có loạt ảnh nào.",
    "Cannot open the study: {0}": "Không mở được ca chụp: {0}", "(no description)": "(không mô tả)",
    "{0} image": "{0} ảnh", "{0} images": "{0} ảnh", "{0} series: no images to display.": "Loạt {0}: không có ảnh để hiển thị.",
    "Loading series…": "Đang tải loạt ảnh…", "Cannot list the images: {0}": "Không lấy được danh sách ảnh: {0}",
    "This series has no images.": "Loạt này không có ảnh.", "Cannot show this image: {0}": "Không hiển thị được ảnh: {0}",
    "Image {0}": "Ảnh {0}", "Loading {0}/{1}": "Đang tải {0}/{1}", "Default (header)": "Mặc định (theo ảnh)",
    "Custom": "Tuỳ chỉnh", "W/L: as stored": "W/L: như ảnh gốc", "Inverted": "Đảo màu",
    "Sign in to the archive": "Đăng nhập vào hệ thống",
  };
  const LANG = (localStorage.getItem("pacs.lang") || navigator.language || "en").toLowerCase().startsWith("vi")
    ? "vi" : "en";
  /** A message in the reader's language; {0}, {1}... are filled from args. */
  function t(key, ...args) {
    const s = (LANG === "vi" && VI[key]) || key;
    return s.replace(/\{(\d)\}/g, (_, n) => String(args[+n]));
  }
  function translatePage() {
    document.documentElement.lang = LANG;
    if (LANG !== "vi") return;
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const key = n.nodeValue.trim().replace(/\s+/g, " ");
      if (key && VI[key]) n.nodeValue = n.nodeValue.replace(n.nodeValue.trim(), VI[key]);
    }
    for (const e of document.querySelectorAll("[title], [aria-label]")) {
      for (const a of ["title", "aria-label"]) {
        const v = e.getAttribute(a);
        if (v && VI[v]) e.setAttribute(a, VI[v]);
      }
    }
  }
  $("#lang").addEventListener("change", (ev) => {
    localStorage.setItem("pacs.lang", ev.target.value);
    location.reload();
  });

  // ------------------------------------------------------------ HTTP, with bearer auth behind a 401
  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  const auth = { token: sessionStorage.getItem("pacs.token"), pending: null };

  async function request(url, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (auth.token) headers.set("Authorization", `Bearer ${auth.token}`);
    const res = await fetch(url, { ...opts, headers });
    if (res.status === 401 && !opts.noLogin) {
      setToken(null);
      await login();
      return request(url, opts);
    }
    if (!res.ok) {
      let detail = res.statusText;
      try {
        const body = await res.text();
        try {
          const j = JSON.parse(body);
          const issue = (j.issue || [])[0] || {}; // a FHIR OperationOutcome
          detail = j.detail || issue.diagnostics || j.title || j.message || body;
        } catch {
          detail = body.slice(0, 300) || detail;
        }
      } catch {
        /* keep statusText */
      }
      throw new HttpError(res.status, `${res.status}: ${detail}`);
    }
    return res;
  }
  const getJson = async (url) => {
    const res = await request(url, { headers: { Accept: "application/dicom+json, application/json" } });
    return res.status === 204 ? [] : res.json();
  };
  function setToken(token) {
    auth.token = token;
    if (token) sessionStorage.setItem("pacs.token", token);
    else sessionStorage.removeItem("pacs.token");
    $("#logout").hidden = !token;
  }

  /** Show the sign-in dialog; resolves once a token was obtained (one dialog for concurrent 401s). */
  function login() {
    if (auth.pending) return auth.pending;
    const dlg = $("#login");
    const form = $("#login-form");
    const err = $("#login-error");
    auth.pending = new Promise((resolve) => {
      const onSubmit = async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        const data = Object.fromEntries(new FormData(form));
        try {
          const res = await request(LOGIN_URL, {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "application/json" },
            body: JSON.stringify({ username: data.username, password: data.password }),
            noLogin: true,
          });
          const body = await res.json();
          const token = body.access_token || body.token;
          if (!token) throw new Error("the server sent no token");
          setToken(token);
          form.removeEventListener("submit", onSubmit);
          form.reset();
          dlg.close();
          auth.pending = null;
          resolve();
        } catch (e) {
          err.textContent = e.status === 401 || e.status === 403 ? t("Wrong user name or password.") : t("Sign-in failed: {0}", e.message);
          err.hidden = false;
        }
      };
      form.addEventListener("submit", onSubmit);
      if (!dlg.open) dlg.showModal();
    });
    return auth.pending;
  }
  $("#login").addEventListener("cancel", (ev) => ev.preventDefault()); // nothing works without it
  $("#logout").hidden = !auth.token;
  const LOGOUT_URL = new URL(meta("logout-url", "api/auth/logout"), document.baseURI).href;
  $("#logout").addEventListener("click", async () => {
    // Revoke the token on the server too, so a copy of it stops working.
    if (auth.token) {
      try {
        await fetch(LOGOUT_URL, { method: "POST", headers: { Authorization: `Bearer ${auth.token}` } });
      } catch (e) {
        /* offline: the token still expires by itself */
      }
    }
    setToken(null);
    location.reload();
  });

  // ------------------------------------------------------------ Image loader: priority queue + LRU blob cache
  /** Fetches images with a bounded number of requests in flight, nearest-to-current first, and keeps
   * decoded Image objects behind blob URLs so a series scrolls without the network after one pass. */
  class ImageCache {
    constructor(maxEntries, maxBytes, concurrency) {
      this.max = maxEntries;
      this.maxBytes = maxBytes;
      this.bytes = 0;
      this.concurrency = concurrency;
      this.entries = new Map(); // key -> {url, img}
      this.inflight = new Map(); // key -> promise
      this.queue = new Map(); // key -> job
      this.active = 0;
      this.priority = () => 0; // job -> number; Infinity drops the job
    }
    has(key) {
      return this.entries.has(key);
    }
    peek(key) {
      const e = this.entries.get(key);
      if (e) {
        this.entries.delete(key); // LRU: re-insert as newest
        this.entries.set(key, e);
      }
      return e;
    }
    /** A promise of {url, img}; `info` is what the priority function looks at. */
    load(key, url, info = {}, accept = "image/jpeg, image/png;q=0.9, image/*;q=0.8") {
      const hit = this.peek(key);
      if (hit) return Promise.resolve(hit);
      if (this.inflight.has(key)) return this.inflight.get(key);
      const queued = this.queue.get(key);
      if (queued) {
        Object.assign(queued.info, info);
        this.pump();
        return queued.promise;
      }
      const job = { key, url, info, accept };
      job.promise = new Promise((resolve, reject) => Object.assign(job, { resolve, reject }));
      job.promise.catch(() => {}); // a dropped prefetch is not an unhandled rejection
      this.queue.set(key, job);
      this.pump();
      return job.promise;
    }
    pump() {
      while (this.active < this.concurrency && this.queue.size) {
        let best = null;
        let bestP = Infinity;
        for (const job of this.queue.values()) {
          const p = this.priority(job);
          if (p === Infinity) {
            this.queue.delete(job.key);
            job.reject(new Error("dropped"));
          } else if (p < bestP) {
            best = job;
            bestP = p;
          }
        }
        if (!best) return;
        this.queue.delete(best.key);
        this.run(best);
      }
    }
    async run(job) {
      this.active++;
      const p = (async () => {
        const res = await request(job.url, { headers: { Accept: job.accept } });
        const blob = await res.blob();
        const url = URL.createObjectURL(blob);
        const img = new Image();
        img.src = url;
        try {
          await img.decode();
        } catch {
          URL.revokeObjectURL(url);
          throw new Error(`the server sent an image the browser cannot decode (${blob.type})`);
        }
        const entry = { url, img, bytes: blob.size };
        this.entries.set(job.key, entry);
        this.bytes += entry.bytes;
        this.evict();
        return entry;
      })();
      this.inflight.set(job.key, p);
      try {
        job.resolve(await p);
      } catch (e) {
        job.reject(e);
      } finally {
        this.inflight.delete(job.key);
        this.active--;
        this.pump();
      }
    }
    evict() {
      while (this.entries.size > this.max || (this.bytes > this.maxBytes && this.entries.size > 1)) {
        const [key, e] = this.entries.entries().next().value;
        this.entries.delete(key);
        this.bytes -= e.bytes;
        URL.revokeObjectURL(e.url);
      }
    }
  }
  // Two windows of a 600-slice series, at most ~300 MB of encoded images; least recently used go first.
  const images = new ImageCache(1200, 300 * 1024 * 1024, 6);
  const thumbs = new ImageCache(400, 32 * 1024 * 1024, 2);

  // ------------------------------------------------------------ Routing: state lives in the URL hash
  function parseHash() {
    const h = location.hash.replace(/^#/, "") || "/";
    const [path, qs = ""] = h.split("?");
    return { path, params: new URLSearchParams(qs) };
  }
  function route() {
    const { path, params } = parseHash();
    const m = path.match(/^\/study\/([0-9.]+)$/);
    if (m) {
      $("#list-view").hidden = true;
      $("#study-view").hidden = false;
      openStudy(m[1], params);
    } else {
      studySeq++;
      closeStudy();
      $("#back").href = location.hash || "#/"; // "Studies" returns to this search
      $("#study-view").hidden = true;
      $("#list-view").hidden = false;
      showList(params);
    }
  }
  let studySeq = 0; // bumps whenever the study on screen changes; late answers for older ones are dropped
  window.addEventListener("hashchange", route);

  // ------------------------------------------------------------ Study list (QIDO-RS search for studies)
  const SEARCH_KEYS = ["PatientName", "PatientID", "AccessionNumber", "StudyDate", "ModalitiesInStudy"];
  const INCLUDE = ["PatientBirthDate", "PatientSex", "StudyDescription", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "ModalitiesInStudy"];
  let listSeq = 0;

  function formToParams() {
    const f = new FormData($("#search"));
    const p = new URLSearchParams();
    for (const k of ["PatientName", "PatientID", "AccessionNumber", "ModalitiesInStudy"]) {
      const v = String(f.get(k) || "").trim();
      if (v) p.set(k, v);
    }
    const from = isoToDa(f.get("from"));
    const to = isoToDa(f.get("to"));
    if (from || to) p.set("StudyDate", from === to ? from : `${from}-${to}`);
    return p;
  }
  function paramsToForm(p) {
    const form = $("#search");
    for (const k of ["PatientName", "PatientID", "AccessionNumber", "ModalitiesInStudy"]) {
      form.elements[k].value = p.get(k) || "";
    }
    const d = p.get("StudyDate") || "";
    const [from, to] = d.includes("-") ? d.split("-") : [d, d];
    form.elements.from.value = daToIso(from);
    form.elements.to.value = daToIso(to);
  }
  function search(params) {
    const target = `#/?${params.toString()}`;
    if (location.hash === target) route();
    else location.hash = target;
  }
  $("#search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    search(formToParams());
  });
  $("#search").addEventListener("reset", () => setTimeout(() => search(new URLSearchParams()), 0));
  for (const b of document.querySelectorAll("[data-range]")) {
    b.addEventListener("click", () => {
      const form = $("#search");
      const today = new Date();
      const from = new Date(today);
      if (b.dataset.range === "7") from.setDate(today.getDate() - 6);
      form.elements.from.value = b.dataset.range ? localIso(from) : "";
      form.elements.to.value = b.dataset.range ? localIso(today) : "";
      search(formToParams());
    });
  }
  function pageTo(delta) {
    const { params } = parseHash();
    const page = Math.max(1, (parseInt(params.get("page"), 10) || 1) + delta);
    if (page === 1) params.delete("page");
    else params.set("page", String(page));
    search(params);
  }
  $("#prev").addEventListener("click", () => pageTo(-1));
  $("#next").addEventListener("click", () => pageTo(1));

  async function showList(params) {
    paramsToForm(params);
    document.title = `${t("Studies")} - PACS`;
    const page = Math.max(1, parseInt(params.get("page"), 10) || 1);
    const q = new URLSearchParams();
    for (const k of SEARCH_KEYS) if (params.get(k)) q.set(k, params.get(k));
    if (q.has("PatientName")) q.set("fuzzymatching", "true");
    q.set("includefield", INCLUDE.join(","));
    q.set("limit", String(PAGE_SIZE + 1)); // one extra row tells whether there is a next page
    q.set("offset", String((page - 1) * PAGE_SIZE));
    const seq = ++listSeq;
    const table = $("#studies");
    const tbody = table.tBodies[0];
    table.setAttribute("aria-busy", "true");
    status(t("Searching…"));
    let rows;
    try {
      rows = params.get("identifier")
        ? await studiesOfIdentifier(params.get("identifier"), page)
        : await getJson(`${ROOT}studies?${q}`);
    } catch (e) {
      if (seq !== listSeq) return;
      tbody.replaceChildren();
      $("#empty").textContent = t("Search failed: {0}", e.message);
      $("#empty").hidden = false;
      status("");
      table.dataset.for = location.hash; // the search this table shows (tests wait for it)
      table.removeAttribute("aria-busy");
      return;
    }
    if (seq !== listSeq) return;
    const more = rows.length > PAGE_SIZE;
    rows = rows.slice(0, PAGE_SIZE);
    // Newest first (the server orders pages that way too; this keeps a page stable if it does not).
    rows.sort((a, b) =>
      `${first(b, "StudyDate") || ""}${first(b, "StudyTime") || ""}`.localeCompare(
        `${first(a, "StudyDate") || ""}${first(a, "StudyTime") || ""}`));
    tbody.replaceChildren(...rows.map(studyRow));
    $("#empty").hidden = rows.length > 0;
    $("#empty").textContent = rows.length ? "" : t("No studies match.");
    $("#prev").disabled = page <= 1;
    $("#next").disabled = !more;
    $("#page-info").textContent = rows.length
      ? t("Page {0} · studies {1}–{2}", page, (page - 1) * PAGE_SIZE + 1, (page - 1) * PAGE_SIZE + rows.length)
      : t("Page {0}", page);
    table.dataset.for = location.hash;
    table.removeAttribute("aria-busy");
    status(t("{0} studies", `${rows.length}${more ? "+" : ""}`));
  }

  /** The studies of the patients a FHIR token (system|value) names: the IHE IID link
   * /viewer?identifier=... (or ?patientID=...&issuer=...) lands here. FHIR ImagingStudy search. */
  async function studiesOfIdentifier(token, page) {
    const q = new URLSearchParams({ "patient.identifier": token });
    q.set("_count", String(PAGE_SIZE + 1));
    q.set("_offset", String((page - 1) * PAGE_SIZE));
    const res = await request(`${FHIR}ImagingStudy?${q}`, { headers: { Accept: "application/fhir+json" } });
    const bundle = await res.json();
    return (bundle.entry || []).map((e) => fromImagingStudy(e.resource));
  }
  /** An ImagingStudy as the DICOM JSON study row the list shows. */
  function fromImagingStudy(r) {
    const ds = {};
    const put = (kw, vr, ...vs) => {
      const v = vs.filter((x) => x != null && x !== "");
      if (v.length) ds[TAG[kw]] = { vr, Value: v };
    };
    const p = (r.contained || []).find((c) => c.resourceType === "Patient") || {};
    const name = (p.name || [])[0] || {};
    const ids = p.identifier || [];
    const local = ids.find((i) => !/^urn:vn:(cccd|bhyt)$/.test(i.system || "")) || ids[0] || {};
    const started = (r.started || "").replace(/[-:]/g, "");
    const acc = (r.identifier || []).find((i) => ((i.type || {}).coding || []).some((c) => c.code === "ACSN"));
    put("StudyInstanceUID", "UI", r.id);
    if (name.family || name.given) {
      put("PatientName", "PN", { Alphabetic: `${name.family || ""}^${(name.given || []).join(" ")}` });
    }
    put("PatientID", "LO", local.value);
    put("PatientBirthDate", "DA", (p.birthDate || "").replace(/-/g, ""));
    put("PatientSex", "CS", { male: "M", female: "F", other: "O" }[p.gender]);
    put("StudyDate", "DA", started.slice(0, 8));
    put("StudyTime", "TM", started.slice(9, 15));
    put("AccessionNumber", "SH", acc && acc.value);
    put("StudyDescription", "LO", r.description);
    put("ModalitiesInStudy", "CS", ...(r.modality || []).map((m) => m.code));
    put("NumberOfStudyRelatedSeries", "IS", r.numberOfSeries);
    put("NumberOfStudyRelatedInstances", "IS", r.numberOfInstances);
    return ds;
  }

  function studyRow(ds) {
    const uid = first(ds, "StudyInstanceUID");
    const href = `#/study/${uid}`;
    const name = text(ds, "PatientName") || t("(no name)");
    const tr = el("tr", { "data-study": uid },
      el("td", {}, el("a", { href }, name)),
      el("td", {}, text(ds, "PatientID")),
      el("td", {}, fmtDate(first(ds, "PatientBirthDate"))),
      el("td", {}, text(ds, "PatientSex")),
      el("td", {}, `${fmtDate(first(ds, "StudyDate"))} ${fmtTime(first(ds, "StudyTime"))}`.trim()),
      el("td", {}, values(ds, "ModalitiesInStudy").join("/")),
      el("td", {}, text(ds, "StudyDescription")),
      el("td", {}, text(ds, "AccessionNumber")),
      el("td", { class: "num" }, text(ds, "NumberOfStudyRelatedSeries")),
      el("td", { class: "num" }, text(ds, "NumberOfStudyRelatedInstances")));
    tr.addEventListener("click", (ev) => {
      if (ev.target.closest("a")) return;
      location.hash = href;
    });
    return tr;
  }

  // ------------------------------------------------------------ Study view: the study in the URL, and a prior beside it
  /** Studies on screen by UID: {uid, ds, seriesList}; `current` is the one in the URL. */
  const studies = new Map();
  let current = null;
  /** Resolved when the study's first image is on screen: thumbnails wait for it (the first image has the line). */
  let firstImage = { promise: Promise.resolve(), resolve: () => {} };
  function expectFirstImage() {
    let resolve;
    const promise = new Promise((r) => {
      resolve = r;
    });
    firstImage = { promise, resolve };
  }

  async function loadStudy(uid) {
    if (studies.has(uid)) return studies.get(uid);
    const studyQ = new URLSearchParams({ StudyInstanceUID: uid, includefield: INCLUDE.join(",") });
    const [rows, series] = await Promise.all([
      getJson(`${ROOT}studies?${studyQ}`),
      getJson(`${ROOT}studies/${uid}/series?includefield=NumberOfSeriesRelatedInstances`),
    ]);
    series.sort((a, b) => (num(a, "SeriesNumber") ?? 1e9) - (num(b, "SeriesNumber") ?? 1e9));
    const st = { uid, ds: rows[0] || {}, seriesList: [] };
    st.seriesList = series.map((ds) => ({
      uid: first(ds, "SeriesInstanceUID"), ds, modality: first(ds, "Modality") || "", study: st,
    }));
    studies.set(uid, st);
    return st;
  }
  const findSeries = (uid) => {
    for (const st of studies.values()) {
      const s = st.seriesList.find((x) => x.uid === uid);
      if (s) return s;
    }
    return undefined;
  };

  function closeStudy() {
    for (const v of viewports) v.close();
    studies.clear();
    current = null;
    hooks.emit("studyClosed");
  }

  async function openStudy(studyUid, params) {
    if (current && current.uid === studyUid) {
      const want = params.get("series");
      const v = viewports[0];
      if (want && v.series && want !== v.series.uid) v.show(want);
      return;
    }
    const seq = ++studySeq;
    closeStudy();
    $("#series-list").replaceChildren();
    $("#prior-list").replaceChildren();
    $("#prior-strip").hidden = true;
    viewports[0].message(t("Loading study…"));
    status(t("Loading study…"));
    try {
      const st = await loadStudy(studyUid);
      if (seq !== studySeq) return;
      current = st;
      document.title = `${text(st.ds, "PatientName")} - PACS`;
      expectFirstImage();
      renderStrip($("#series-list"), st);
      status("");
      hooks.emit("studyOpened", st);
      if (!st.seriesList.length) {
        viewports[0].message(t("This study has no series."));
        return;
      }
      const want = params.get("series");
      const pick = st.seriesList.find((s) => s.uid === want)
        || st.seriesList.find((s) => !NON_IMAGE.has(s.modality)) || st.seriesList[0];
      setActive(viewports[0]);
      await viewports[0].show(pick.uid, parseInt(params.get("i"), 10) || 0);
    } catch (e) {
      if (seq !== studySeq) return;
      viewports[0].message(t("Cannot open the study: {0}", e.message));
      status("");
    }
  }

  /** The series buttons of a study: click shows the series in the active viewport; drag one onto a viewport. */
  function renderStrip(list, st) {
    const thumbsAfter = firstImage.promise;
    list.replaceChildren(...st.seriesList.map((s) => {
      const count = text(s.ds, "NumberOfSeriesRelatedInstances");
      const img = el("img", { alt: "", width: 96, height: 96, loading: "lazy" });
      const btn = el("button", {
        type: "button", class: "series", "data-series": s.uid, "aria-pressed": "false", draggable: "true",
        onclick: () => activeViewport().show(s.uid),
        ondragstart: (ev) => {
          ev.dataTransfer.setData("application/x-pacs-series", s.uid);
          ev.dataTransfer.setData("text/plain", s.uid);
          ev.dataTransfer.effectAllowed = "copy";
        },
      },
      el("span", { class: "thumb" }, img),
      el("span", { class: "series-text" },
        el("strong", {}, `${s.modality} ${text(s.ds, "SeriesNumber")}`.trim()),
        el("span", { class: "desc" }, text(s.ds, "SeriesDescription") || t("(no description)")),
        el("span", { class: "count" }, count ? t(count === "1" ? "{0} image" : "{0} images", count) : "")));
      if (!NON_IMAGE.has(s.modality)) {
        const url = `${ROOT}studies/${st.uid}/series/${s.uid}/thumbnail?viewport=128,128`;
        s.thumbUrl = url;
        Promise.race([thumbsAfter, new Promise((r) => setTimeout(r, 3000))]).then(() => thumbs.load(url, url))
          .then((e) => {
            img.src = e.url;
          }, () => btn.classList.add("no-thumb"));
      } else {
        btn.classList.add("no-thumb");
      }
      return el("li", {}, btn);
    }));
    markShownSeries();
  }
  function markShownSeries() {
    const shown = activeViewport().series && activeViewport().series.uid;
    for (const b of document.querySelectorAll(".series")) {
      b.setAttribute("aria-pressed", String(b.dataset.series === shown));
    }
  }

  function setHashParams(changes) {
    const { path, params } = parseHash();
    for (const [k, v] of Object.entries(changes)) {
      if (v == null) params.delete(k);
      else params.set(k, String(v));
    }
    const qs = params.toString();
    // replaceState: scrolling slices must not fill the back button's history.
    history.replaceState(null, "", `#${path}${qs ? `?${qs}` : ""}`);
  }

  // ------------------------------------------------------------ Viewports: one stack each
  const settings = { lossless: localStorage.getItem("pacs.lossless") === "1", tool: "window" };
  const accept = () => (settings.lossless ? "image/png" : "image/jpeg");
  const slider = $("#slider");
  /** Who listens to what the viewports do (measure.js, layout.js): name -> [fn]. */
  const hooks = {
    map: new Map(),
    on(name, fn) {
      if (!this.map.has(name)) this.map.set(name, []);
      this.map.get(name).push(fn);
    },
    emit(name, ...args) {
      for (const fn of this.map.get(name) || []) fn(...args);
    },
  };

  /** The geometry of one slice from its metadata: position along the normal (PS3.3 C.7.6.2). */
  function slicePosition(m) {
    const ipp = values(m, "ImagePositionPatient").map(Number);
    const iop = values(m, "ImageOrientationPatient").map(Number);
    if (ipp.length !== 3 || iop.length !== 6) return undefined;
    const n = [iop[1] * iop[5] - iop[2] * iop[4], iop[2] * iop[3] - iop[0] * iop[5], iop[0] * iop[4] - iop[1] * iop[3]];
    return { pos: ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2], normal: n, ipp, iop };
  }

  class Viewport {
    constructor(n, root) {
      this.n = n;
      this.root = root;
      const q = (cls) => root.querySelector(cls);
      this.img = q("img");
      this.msg = q(".message");
      this.ov = { tl: q(".overlay.tl"), tr: q(".overlay.tr"), bl: q(".overlay.bl"), br: q(".overlay.br") };
      this.bar = q(".vp-progress");
      this.svg = q("svg.marks");
      root.dataset.vp = String(n);
      this.series = null;
      this.stack = [];
      this.meta = new Map();
      this.index = 0;
      this.window = null;
      this.preset = "";
      this.invert = false;
      this.view = { scale: 1, tx: 0, ty: 0, fitted: true };
      this.shown = { key: null, seq: 0, index: -1 };
      this.seq = 0;
      this.cine = null;
      this.loadToken = 0;
      this.firstShown = Promise.resolve();
      this.bind();
    }
    get study() {
      return this.series ? this.series.study : current;
    }
    get isActive() {
      return active === this;
    }

    close() {
      this.loadToken++; // work still in flight for the previous series is dropped when it lands
      clearTimeout(this.urlTimer);
      this.stopCine();
      this.series = null;
      this.stack = [];
      this.meta = new Map();
      this.positions = null;
      this.img.hidden = true;
      this.img.removeAttribute("src");
      for (const node of Object.values(this.ov)) {
        node.textContent = "";
        delete node.dataset.text;
      }
      this.renderProgressNow();
      this.message("");
      hooks.emit("viewChanged", this);
    }

    message(msg) {
      this.msg.textContent = msg || "";
      this.msg.hidden = !msg;
    }

    /** Show series `uid` (of any study on screen) from slice `startIndex`. */
    async show(uid, startIndex = 0) {
      const s = findSeries(uid);
      if (!s) return;
      this.stopCine();
      clearTimeout(this.urlTimer);
      this.drawing = 0;
      this.redraw = false;
      const token = ++this.loadToken;
      this.series = s;
      this.stack = [];
      this.meta = new Map();
      this.positions = null;
      this.window = null;
      this.preset = "";
      this.shown = { key: null, seq: 0, index: -1 };
      this.shownDims = "";
      if (this.n === 0 && s.study === current) setHashParams({ series: uid, i: startIndex || null });
      markShownSeries();
      if (this.isActive) syncToolbar();
      if (NON_IMAGE.has(s.modality)) {
        this.img.hidden = true;
        this.message(t("{0} series: no images to display.", s.modality));
        this.renderOverlay();
        return;
      }
      this.message(t("Loading series…"));
      const base = `${ROOT}studies/${s.study.uid}/series/${uid}`;
      let instances;
      try {
        instances = await getJson(`${base}/instances?includefield=PhotometricInterpretation`);
      } catch (e) {
        if (token === this.loadToken) this.message(t("Cannot list the images: {0}", e.message));
        return;
      }
      if (token !== this.loadToken) return;
      instances.sort((a, b) => (num(a, "InstanceNumber") ?? 1e9) - (num(b, "InstanceNumber") ?? 1e9));
      const stack = [];
      for (const ds of instances) {
        const frames = Math.max(1, num(ds, "NumberOfFrames") || 1);
        for (let f = 1; f <= frames; f++) {
          stack.push({
            sop: first(ds, "SOPInstanceUID"), frame: f, frames, number: num(ds, "InstanceNumber"),
            rows: num(ds, "Rows") || 512, cols: num(ds, "Columns") || 512,
            color: !/^MONOCHROME|^$/.test(first(ds, "PhotometricInterpretation") || ""),
          });
        }
      }
      this.stack = stack;
      if (this.isActive) syncToolbar();
      if (!stack.length) {
        this.message(t("This series has no images."));
        return;
      }
      this.message("");
      this.fps = s.modality === "US" ? 25 : 15;
      this.view.fitted = true;
      let resolveShown;
      this.firstShown = new Promise((resolve) => {
        resolveShown = resolve;
      });
      this.onShown = resolveShown;
      this.placeholder(Math.min(Math.max(0, startIndex), stack.length - 1));
      this.setIndex(Math.min(Math.max(0, startIndex), stack.length - 1), { force: true, quiet: true });
      // On a slow link the first image must not share the line: neighbours, then metadata (WADO-RS,
      // PS3.18 10.4.1.1.2: overlay facts and header windows; megabytes for a long series) come after.
      await Promise.race([this.firstShown, new Promise((r) => setTimeout(r, 2000))]);
      if (token !== this.loadToken) return;
      this.prefetch();
      getJson(`${base}/metadata`).then((all) => {
        if (token !== this.loadToken) return;
        for (const ds of all) this.meta.set(first(ds, "SOPInstanceUID"), ds);
        this.positions = stack.map((it) => slicePosition(this.meta.get(it.sop)));
        const m = this.meta.get(stack[0].sop);
        this.frameOfReference = first(m, "FrameOfReferenceUID") || "";
        const rate = num(m, "RecommendedDisplayFrameRate") || num(m, "CineRate")
          || (num(m, "FrameTime") ? 1000 / num(m, "FrameTime") : 0);
        if (rate) this.fps = Math.round(Math.min(60, Math.max(1, rate)));
        if (this.isActive) syncToolbar();
        this.renderOverlay();
        hooks.emit("metadata", this);
      }, () => {});
    }

    /** The series thumbnail, scaled up, while the first image is on its way (a slow link sees something at once). */
    placeholder(i) {
      const hit = this.series.thumbUrl && thumbs.peek(this.series.thumbUrl);
      if (!hit || i !== 0 || this.stack.length > 1) return;
      const it = this.stack[i];
      this.img.src = hit.url;
      this.img.width = it.cols;
      this.img.height = it.rows;
      this.img.dataset.index = "placeholder";
      this.img.hidden = false;
      this.fit();
    }

    /** The rendered-resource URL of stack item `i` under the current window (PS3.18 9.5.1.2). */
    urlOf(i, win = this.window) {
      const it = this.stack[i];
      const base = `${ROOT}studies/${this.study.uid}/series/${this.series.uid}/instances/${it.sop}`;
      const path = it.frames > 1 ? `${base}/frames/${it.frame}/rendered` : `${base}/rendered`;
      const q = new URLSearchParams();
      if (win) q.set("window", `${Math.round(win.c)},${Math.max(1, Math.round(win.w))},linear`);
      // An explicit quality for JPEG also keeps the JPEG and PNG URLs apart in HTTP caches.
      if (!settings.lossless) q.set("quality", "90");
      const big = Math.max(it.rows, it.cols);
      if (big > 1024) {
        const k = 1024 / big;
        q.set("viewport", `${Math.round(it.cols * k)},${Math.round(it.rows * k)}`);
      }
      const qs = q.toString();
      return qs ? `${path}?${qs}` : path;
    }
    windowKey(win = this.window) {
      return win ? `${Math.round(win.c)},${Math.max(1, Math.round(win.w))}` : "header";
    }
    keyOf(i) {
      return `${this.series.uid}|${i}|${this.windowKey()}|${settings.lossless ? "png" : "jpeg"}`;
    }
    load(i) {
      const info = { series: this.series.uid, index: i, wkey: this.windowKey(), fmt: accept() };
      return images.load(this.keyOf(i), this.urlOf(i), info, accept());
    }

    setIndex(i, { force = false, quiet = false } = {}) {
      if (!this.stack.length) return;
      i = Math.min(Math.max(0, i), this.stack.length - 1);
      if (i === this.index && !force) return;
      this.index = i;
      if (this.isActive) {
        slider.value = String(i);
        $("#slider-out").textContent = `${i + 1} / ${this.stack.length}`;
      }
      // The slice goes into the URL once scrolling pauses (browsers throttle history updates).
      clearTimeout(this.urlTimer);
      if (this.n === 0 && this.series.study === current) {
        const series = this.series.uid;
        this.urlTimer = setTimeout(() => this.series && setHashParams({ series, i: i || null }), 250);
      }
      this.renderOverlay();
      this.draw();
      hooks.emit("viewChanged", this);
      if (!quiet) hooks.emit("scrolled", this);
    }

    /** Show the current slice: from the cache at once, else ask the loader at top priority. */
    draw() {
      const i = this.index;
      const key = this.keyOf(i);
      const seq = ++this.seq;
      const hit = images.peek(key);
      if (hit) {
        this.display(hit, key, i, seq);
        return;
      }
      // Latest wins: one uncached image on its way at a time, so dragging the window or scrolling
      // fast on a slow link does not queue a render per mouse move; the newest state follows it.
      if (this.drawing && performance.now() - this.drawing < 5000) {
        this.redraw = true;
        return;
      }
      this.drawing = performance.now();
      const token = this.loadToken;
      this.load(i)
        .then((e) => {
          if (token === this.loadToken && i === this.index && this.series && seq > this.shown.seq) {
            this.display(e, key, i, seq);
          }
          this.renderProgress();
        }, (e) => {
          if (e.message !== "dropped" && i === this.index && token === this.loadToken) {
            this.message(t("Cannot show this image: {0}", e.message));
          }
        })
        .finally(() => {
          this.drawing = 0;
          if (this.redraw) {
            this.redraw = false;
            if (this.series && this.stack.length) this.draw();
          }
        });
    }

    display(entry, key, i, seq) {
      const it = this.stack[i];
      this.shown = { key, seq, index: i };
      if (this.onShown) this.onShown();
      if (this.n === 0) firstImage.resolve();
      const img = this.img;
      img.src = entry.url;
      img.width = it.cols;
      img.height = it.rows;
      img.dataset.index = String(i);
      img.dataset.sop = it.sop;
      img.dataset.frame = String(it.frame);
      img.dataset.window = key.split("|")[2];
      img.dataset.format = key.split("|")[3];
      img.alt = t("Image {0}", `${it.number ?? i + 1}${it.frames > 1 ? ` / ${it.frame}` : ""}`);
      img.hidden = false;
      this.message("");
      const dims = `${it.cols}x${it.rows}`;
      if (this.view.fitted && dims !== this.shownDims) this.fit();
      else this.applyView();
      this.shownDims = dims;
    }

    /** Queue every slice of the series, nearest to the current one first (the loader re-sorts as we scroll). */
    prefetch() {
      if (!this.stack.length) return;
      for (let i = 0; i < this.stack.length; i++) {
        if (!images.has(this.keyOf(i))) this.load(i).then(() => this.renderProgress(), () => {});
      }
      this.renderProgressNow();
    }
    renderProgress() {
      if (this.progressFrame) return;
      this.progressFrame = requestAnimationFrame(() => {
        this.progressFrame = 0;
        this.renderProgressNow();
      });
    }
    renderProgressNow() {
      let n = 0;
      const total = this.series ? this.stack.length : 0;
      for (let i = 0; i < total; i++) if (images.has(this.keyOf(i))) n++;
      const loading = total > 0 && n < total;
      this.bar.hidden = !loading;
      if (loading) this.bar.style.width = `${(100 * n) / total}%`;
      if (this.isActive) {
        $("#progress").textContent = loading ? t("Loading {0}/{1}", n, total) : "";
      }
    }

    currentMeta() {
      const it = this.stack[this.index];
      return it ? this.meta.get(it.sop) : undefined;
    }
    headerWindow() {
      const m = this.currentMeta();
      const c = num(m, "WindowCenter");
      const w = num(m, "WindowWidth");
      return c !== undefined && w ? { c, w } : null;
    }
    effectiveWindow() {
      return this.window || this.headerWindow();
    }
    setWindow(win, preset = "") {
      this.window = win;
      this.preset = preset;
      if (this.isActive) $("#preset").value = preset || (win ? "custom" : "");
      this.renderOverlay();
      this.draw();
    }
    /** Window presets fit greyscale images only; colour (US, ES) is shown as stored. */
    isColor() {
      const it = this.stack[this.index] || this.stack[0];
      return Boolean(it && it.color);
    }
    applyPreset(id) {
      if (!id) {
        this.setWindow(null, "");
      } else {
        const p = CT_PRESETS.find((x) => x[0] === id);
        if (p) this.setWindow({ c: p[2], w: p[3] }, id);
      }
      this.prefetch();
    }
    reset() {
      this.invert = false;
      this.setWindow(null, "");
      this.fit();
      this.prefetch();
    }

    renderOverlay() {
      const st = (this.study && this.study.ds) || {};
      const it = this.stack[this.index];
      const m = this.currentMeta();
      const s = this.series;
      const lines = (node, ls) => {
        const shown = ls.filter(Boolean);
        const key = shown.join("\n");
        if (node.dataset.text === key) return; // unchanged: no DOM work while scrolling
        node.dataset.text = key;
        node.replaceChildren(...shown.map((x) => el("div", {}, x)));
      };
      const bits = [fmtDate(first(st, "PatientBirthDate")), text(st, "PatientSex")].filter(Boolean).join(" ");
      lines(this.ov.tl, [text(st, "PatientName"), text(st, "PatientID") && `ID: ${text(st, "PatientID")}`, bits]);
      lines(this.ov.tr, [
        text(m || st, "InstitutionName"),
        text(st, "StudyDescription"),
        [fmtDate(first(st, "StudyDate")), fmtTime(first(st, "StudyTime"))].filter(Boolean).join(" "),
        text(st, "AccessionNumber") && `Acc: ${text(st, "AccessionNumber")}`,
        s && s.study !== current && t("Prior"),
      ]);
      if (!s) return;
      const loc = num(m, "SliceLocation");
      const thick = num(m, "SliceThickness");
      lines(this.ov.bl, [
        `Se: ${text(s.ds, "SeriesNumber") || "?"} ${s.modality} ${text(s.ds, "SeriesDescription")}`.trim(),
        it && (it.frames > 1 ? `Im: ${it.number ?? "?"}` : `Im: ${it.number ?? "?"}  (${this.index + 1}/${this.stack.length})`),
        it && it.frames > 1 && `Frame: ${it.frame}/${it.frames}`,
        loc !== undefined && `Loc: ${loc.toFixed(1)} mm${thick ? `  Thk: ${thick} mm` : ""}`,
      ]);
      const win = this.effectiveWindow();
      const label = this.preset ? ` ${t(CT_PRESETS.find((p) => p[0] === this.preset)?.[1] || "")}` : "";
      const cal = PACS.calibrationOf ? PACS.calibrationOf(m) : null;
      lines(this.ov.br, [
        win ? `W: ${Math.round(win.w)} L: ${Math.round(win.c)}${label}` : t("W/L: as stored"),
        settings.lossless ? t("Lossless") : "JPEG",
        m && (cal && cal.source ? t("Cal: {0}", t(cal.source)) : t("Cal: none (px)")),
        `Zoom: ${Math.round(this.view.scale * 100)}%`,
        this.invert && t("Inverted"),
      ]);
    }

    // ---- geometry: zoom, pan, fit (client side; the pixels come from the server)
    fit() {
      const it = this.stack[this.index];
      if (!it) return;
      const r = this.root.getBoundingClientRect();
      const scale = Math.min(r.width / it.cols, r.height / it.rows) || 1;
      this.view = { scale, tx: 0, ty: 0, fitted: true };
      this.applyView();
    }
    applyView() {
      const { scale, tx, ty } = this.view;
      this.img.style.transform = `translate(-50%, -50%) translate(${tx}px, ${ty}px) scale(${scale})`;
      this.img.classList.toggle("inverted", this.invert);
      this.renderOverlay();
      hooks.emit("viewChanged", this);
    }
    zoomBy(factor, cx, cy) {
      const r = this.root.getBoundingClientRect();
      const px = (cx ?? r.left + r.width / 2) - (r.left + r.width / 2);
      const py = (cy ?? r.top + r.height / 2) - (r.top + r.height / 2);
      const v = this.view;
      const next = Math.min(20, Math.max(0.05, v.scale * factor));
      const k = next / v.scale;
      // Keep the point under the cursor where it is.
      this.view = { scale: next, tx: px - (px - v.tx) * k, ty: py - (py - v.ty) * k, fitted: false };
      this.applyView();
    }
    /** Image pixel coordinates (0,0 the top left corner of the first pixel) of a client point, and back. */
    toImage(clientX, clientY) {
      const it = this.stack[this.index];
      const r = this.root.getBoundingClientRect();
      const { scale, tx, ty } = this.view;
      return [(clientX - r.left - r.width / 2 - tx) / scale + it.cols / 2, (clientY - r.top - r.height / 2 - ty) / scale + it.rows / 2];
    }
    toScreen(p) {
      const it = this.stack[this.index];
      const r = this.root.getBoundingClientRect();
      const { scale, tx, ty } = this.view;
      return [r.width / 2 + tx + (p[0] - it.cols / 2) * scale, r.height / 2 + ty + (p[1] - it.rows / 2) * scale];
    }

    // ---- cine (multi-frame ultrasound, or any stack)
    toggleCine() {
      if (this.cine) this.stopCine();
      else this.startCine();
    }
    startCine() {
      if (this.stack.length < 2) return;
      let last = performance.now();
      const tick = (now) => {
        if (!this.cine) return;
        const fps = Math.min(60, Math.max(1, (this.isActive ? parseFloat($("#fps").value) : this.fps) || 15));
        if (now - last >= 1000 / fps) {
          const next = (this.index + 1) % this.stack.length;
          // Wait for the next frame rather than skipping it on a slow link.
          if (images.has(this.keyOf(next))) {
            last = now;
            this.setIndex(next);
          } else {
            this.load(next).catch(() => {});
          }
        }
        this.cine = requestAnimationFrame(tick);
      };
      this.cine = requestAnimationFrame(tick);
      if (this.isActive) syncToolbar();
    }
    stopCine() {
      if (this.cine) cancelAnimationFrame(this.cine);
      this.cine = null;
      if (this.isActive) syncToolbar();
    }

    // ---- input on this viewport: wheel, drag, touch (keys go to the active viewport)
    bind() {
      const root = this.root;
      let wheelAcc = 0;
      root.addEventListener("wheel", (ev) => {
        if (!this.stack.length) return;
        ev.preventDefault();
        setActive(this);
        if (ev.ctrlKey) {
          this.zoomBy(Math.exp(-ev.deltaY / 300), ev.clientX, ev.clientY);
          return;
        }
        wheelAcc += ev.deltaMode === 1 ? ev.deltaY * 33 : ev.deltaMode === 2 ? ev.deltaY * 400 : ev.deltaY;
        // One wheel notch (~100 px) is one slice; a trackpad's small deltas add up to one.
        if (Math.abs(wheelAcc) >= 50) {
          const steps = Math.sign(wheelAcc) * Math.max(1, Math.round(Math.abs(wheelAcc) / 100));
          wheelAcc = 0;
          this.setIndex(this.index + steps);
        }
      }, { passive: false });
      root.addEventListener("contextmenu", (ev) => ev.preventDefault());
      const touches = new Map(); // pointerId -> {x, y}
      let drag = null;
      let pinch = null;
      const pinchState = () => {
        const [a, b] = [...touches.values()];
        return { d: Math.hypot(a.x - b.x, a.y - b.y) || 1, x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      };
      root.addEventListener("pointerdown", (ev) => {
        setActive(this);
        if (!this.stack.length) return;
        root.focus({ preventScroll: true });
        if (ev.pointerType === "touch") {
          touches.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
          if (touches.size === 2) { // two fingers: pinch to zoom, move to pan; the one-finger drag stops
            if (drag && drag.tool) drag.tool.cancel();
            drag = null;
            pinch = { ...pinchState(), view: { ...this.view } };
          }
        }
        root.setPointerCapture(ev.pointerId);
        if (pinch) return;
        let mode = ev.button === 1 ? "pan" : ev.button === 2 ? "zoom" : settings.tool;
        if (mode === "window" && this.isColor()) mode = "pan"; // no window on colour images
        const win = this.effectiveWindow() || { c: 128, w: 256 };
        drag = { mode, x: ev.clientX, y: ev.clientY, win: { ...win }, view: { ...this.view }, moved: false };
        if (ev.button === 0 && PACS.measure) drag.tool = PACS.measure.pointerDown(this, ev, mode);
        if (drag.tool === "handled") drag = null;
        ev.preventDefault();
      });
      root.addEventListener("pointermove", (ev) => {
        if (touches.has(ev.pointerId)) touches.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
        if (pinch && touches.size === 2) {
          const now = pinchState();
          const r = root.getBoundingClientRect();
          const k = Math.min(20, Math.max(0.05, pinch.view.scale * (now.d / pinch.d))) / pinch.view.scale;
          const px = pinch.x - (r.left + r.width / 2);
          const py = pinch.y - (r.top + r.height / 2);
          this.view = {
            scale: pinch.view.scale * k, fitted: false,
            tx: px - (px - pinch.view.tx) * k + (now.x - pinch.x), ty: py - (py - pinch.view.ty) * k + (now.y - pinch.y),
          };
          this.applyView();
          return;
        }
        if (!drag) return;
        const dx = ev.clientX - drag.x;
        const dy = ev.clientY - drag.y;
        drag.moved = drag.moved || Math.abs(dx) + Math.abs(dy) > 2;
        if (!drag.moved) return;
        if (drag.tool) {
          drag.tool.move(ev);
        } else if (drag.mode === "window") {
          const k = Math.max(0.5, drag.win.w / 250);
          const win = { c: drag.win.c + dy * k, w: Math.max(1, drag.win.w + dx * k) };
          if (!drag.frame) {
            drag.frame = requestAnimationFrame(() => {
              if (!drag) return;
              drag.frame = 0;
              this.setWindow(drag.pending, ""); // the latest position, not the first of this frame
            });
          }
          drag.pending = win;
        } else if (drag.mode === "pan") {
          this.view = { ...drag.view, tx: drag.view.tx + dx, ty: drag.view.ty + dy, fitted: false };
          this.applyView();
        } else if (drag.mode === "zoom") {
          this.view = { ...drag.view, fitted: false };
          this.zoomBy(Math.exp(-dy / 150)); // about the centre of the viewport
        }
      });
      const endDrag = (ev) => {
        touches.delete(ev.pointerId);
        if (touches.size < 2) pinch = null;
        if (!drag) return;
        if (drag.tool) {
          drag.tool.end(ev, drag.moved);
        } else if (drag.mode === "window" && drag.pending) {
          if (drag.frame) cancelAnimationFrame(drag.frame);
          this.setWindow(drag.pending, "");
          this.prefetch();
        }
        drag = null;
      };
      root.addEventListener("pointerup", endDrag);
      root.addEventListener("pointercancel", endDrag);
      // A series thumbnail dropped here is shown here.
      root.addEventListener("dragover", (ev) => {
        if ([...ev.dataTransfer.types].includes("application/x-pacs-series")) {
          ev.preventDefault();
          ev.dataTransfer.dropEffect = "copy";
          root.classList.add("drop");
        }
      });
      root.addEventListener("dragleave", () => root.classList.remove("drop"));
      root.addEventListener("drop", (ev) => {
        root.classList.remove("drop");
        const uid = ev.dataTransfer.getData("application/x-pacs-series");
        if (!uid) return;
        ev.preventDefault();
        setActive(this);
        this.show(uid);
      });
    }
  }

  const viewports = [new Viewport(0, $("#viewport"))];
  let active = viewports[0];
  const activeViewport = () => active;
  /** A viewport more (layouts 1x2, 2x2): the first one's markup, ids numbered. */
  function addViewport() {
    const n = viewports.length;
    const root = $("#viewport").cloneNode(true);
    root.id = `viewport-${n + 1}`;
    for (const e of root.querySelectorAll("[id]")) e.id = `${e.id}-${n + 1}`;
    root.setAttribute("aria-describedby", `ov-bl-${n + 1}`);
    root.setAttribute("aria-label", t("Viewport {0}", n + 1));
    root.querySelector("img").hidden = true;
    root.querySelector("img").removeAttribute("src");
    root.classList.remove("active", "drop");
    for (const o of root.querySelectorAll(".overlay")) {
      o.replaceChildren();
      delete o.dataset.text;
    }
    root.querySelector("svg.marks").replaceChildren();
    $("#viewports").append(root);
    const v = new Viewport(n, root);
    viewports.push(v);
    return v;
  }
  function setActive(v) {
    if (active === v) return;
    active = v;
    for (const x of viewports) x.root.classList.toggle("active", x === v);
    syncToolbar();
    markShownSeries();
    hooks.emit("activated", v);
  }

  /** The toolbar, slider and presets show the active viewport's state. */
  function syncToolbar() {
    const v = active;
    const n = v.stack.length;
    slider.max = String(Math.max(0, n - 1));
    slider.value = String(v.index);
    slider.disabled = n < 2;
    $("#slider-out").textContent = n ? `${v.index + 1} / ${n}` : "";
    $("#cine").disabled = n < 2;
    $("#cine").setAttribute("aria-pressed", String(Boolean(v.cine)));
    $("#cine").textContent = v.cine ? t("❚❚ Pause") : t("▶ Cine");
    if (v.fps) $("#fps").value = String(v.fps);
    $("#invert").setAttribute("aria-pressed", String(v.invert));
    renderPresets(v);
    v.renderProgressNow();
  }
  function renderPresets(v) {
    const sel = $("#preset");
    sel.disabled = !v.stack.length || v.isColor();
    const opts = [el("option", { value: "" }, t("Default (header)"))];
    if (v.series && v.series.modality === "CT") {
      CT_PRESETS.forEach(([id, label, c, w], n) =>
        opts.push(el("option", { value: id }, `${n + 1} ${t(label)} (W${w} L${c})`)));
    }
    opts.push(el("option", { value: "custom", disabled: true }, t("Custom")));
    sel.replaceChildren(...opts);
    sel.value = v.preset || (v.window ? "custom" : "");
  }

  // Loader priority: series and windows on screen only, nearest slice first, slightly favouring ahead.
  images.priority = (job) => {
    const { info } = job;
    let best = Infinity;
    for (const v of viewports) {
      if (!v.series || info.series !== v.series.uid || info.wkey !== v.windowKey() || info.fmt !== accept()) continue;
      const d = info.index - v.index;
      best = Math.min(best, d >= 0 ? d : -d * 1.5);
    }
    return best;
  };

  // ------------------------------------------------------------ Keys, toolbar
  slider.addEventListener("input", () => active.setIndex(parseInt(slider.value, 10)));

  /** Next or previous image series of the active viewport's study. */
  function stepSeries(delta) {
    const v = active;
    const list = (v.study || current || { seriesList: [] }).seriesList.filter((s) => !NON_IMAGE.has(s.modality));
    if (!list.length) return;
    const at = list.findIndex((s) => v.series && s.uid === v.series.uid);
    v.show(list[(at + delta + list.length) % list.length].uid);
  }

  document.addEventListener("keydown", (ev) => {
    if ($("#study-view").hidden || $("#login").open || $("#help").open || ev.altKey || ev.metaKey || ev.ctrlKey) {
      return;
    }
    const tg = ev.target;
    if (tg !== slider && tg.closest && tg.closest("input, select, textarea")) return;
    const v = active;
    const k = ev.key;
    const step = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 }[k];
    let handled = true;
    if (ev.shiftKey && (k === "ArrowDown" || k === "ArrowUp")) stepSeries(k === "ArrowDown" ? 1 : -1);
    else if (k === "]" || k === "[") stepSeries(k === "]" ? 1 : -1);
    else if (step !== undefined) v.setIndex(v.index + step);
    else if (k === "Home") v.setIndex(0);
    else if (k === "End") v.setIndex(v.stack.length - 1);
    else if (k === " " && !(tg.closest && tg.closest("button"))) $("#cine").click();
    else if (k === "i" || k === "I") $("#invert").click();
    else if (k === "F" && ev.shiftKey) $("#fullscreen").click();
    else if (k === "f") v.fit();
    else if (k === "r" || k === "R") $("#reset").click();
    else if (k === "?") $("#help").showModal();
    else if (k === "+" || k === "=") v.zoomBy(1.25);
    else if (k === "-") v.zoomBy(0.8);
    else if (k === "0" && !v.isColor()) v.applyPreset("");
    else if (/^[1-9]$/.test(k) && v.series && v.series.modality === "CT" && !v.isColor()) {
      v.applyPreset(CT_PRESETS[+k - 1][0]);
    } else if (TOOL_KEYS[k.toLowerCase()]) setTool(TOOL_KEYS[k.toLowerCase()]);
    else handled = hooks.map.has("key") && (hooks.map.get("key") || []).some((fn) => fn(ev));
    if (handled) ev.preventDefault();
  });

  const TOOL_KEYS = { w: "window", p: "pan", z: "zoom" };
  function setTool(tool) {
    settings.tool = tool;
    for (const b of document.querySelectorAll(".tool")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
    for (const v of viewports) v.root.dataset.tool = tool;
    hooks.emit("tool", tool);
  }

  for (const b of document.querySelectorAll(".tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("#preset").addEventListener("change", (ev) => active.applyPreset(ev.target.value));
  $("#invert").addEventListener("click", () => {
    active.invert = !active.invert;
    $("#invert").setAttribute("aria-pressed", String(active.invert));
    active.applyView();
  });
  $("#fit").addEventListener("click", () => active.fit());
  $("#reset").addEventListener("click", () => {
    active.reset();
    syncToolbar();
  });
  $("#cine").addEventListener("click", () => active.toggleCine());
  $("#help-btn").addEventListener("click", () => $("#help").showModal());
  $("#fullscreen").addEventListener("click", () => {
    const target = $(".viewer");
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else if (target.requestFullscreen) target.requestFullscreen().catch(() => {});
  });
  document.addEventListener("fullscreenchange", () => {
    $("#fullscreen").setAttribute("aria-pressed", String(Boolean(document.fullscreenElement)));
    setTimeout(() => viewports.forEach((v) => v.view.fitted && v.stack.length && v.fit()), 50);
  });
  $("#lossless").setAttribute("aria-pressed", String(settings.lossless));
  $("#lossless").addEventListener("click", () => {
    settings.lossless = !settings.lossless;
    localStorage.setItem("pacs.lossless", settings.lossless ? "1" : "0");
    $("#lossless").setAttribute("aria-pressed", String(settings.lossless));
    for (const v of viewports) {
      if (!v.series) continue;
      v.renderOverlay();
      v.draw();
      v.prefetch();
    }
  });
  window.addEventListener("resize", () => {
    for (const v of viewports) if (v.view.fitted && v.stack.length) v.fit();
  });

  // ------------------------------------------------------------ What measure.js and layout.js build on
  window.PACS = {
    $, el, t, VI, ROOT, TAG, values, first, num, text, fmtDate, request, getJson, status, NON_IMAGE,
    images, thumbs, hooks, viewports, settings, studies, loadStudy, findSeries, renderStrip, markShownSeries,
    addViewport, setActive, setTool, syncToolbar, TOOL_KEYS,
    get active() {
      return active;
    },
    get current() {
      return current;
    },
  };
  // Deferred scripts run in order: measure.js and layout.js are in PACS by DOMContentLoaded.
  document.addEventListener("DOMContentLoaded", () => {
    translatePage();
    $("#lang").value = LANG;
    for (const v of viewports) v.root.classList.toggle("active", v === active);
    setTool("window");
    route();
  });
})();
