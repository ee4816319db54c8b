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
  const CT_PRESETS = [
    ["brain", "Brain", 40, 80],
    ["lung", "Lung", -600, 1500],
    ["bone", "Bone", 300, 1500],
    ["abdomen", "Abdomen", 60, 400],
    ["soft", "Soft tissue", 50, 350],
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
    "CT presets brain, lung, bone, abdomen, soft tissue; 0 the header's window":
      "cửa sổ CT não, phổi, xương, bụng, mô mềm; 0 cửa sổ theo ảnh", "Middle drag, P": "Kéo nút giữa, P",
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
  translatePage();
  $("#lang").value = LANG;
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
      viewer.close();
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

  // ------------------------------------------------------------ Study view
  async function openStudy(studyUid, params) {
    if (viewer.study && viewer.study.uid === studyUid) {
      const want = params.get("series");
      if (want && viewer.series && want !== viewer.series.uid) viewer.selectSeries(want);
      return;
    }
    const seq = ++studySeq;
    viewer.close();
    viewer.study = { uid: studyUid, ds: null };
    $("#series-list").replaceChildren();
    viewer.message(t("Loading study…"));
    status(t("Loading study…"));
    try {
      const studyQ = new URLSearchParams({ StudyInstanceUID: studyUid, includefield: INCLUDE.join(",") });
      const [studies, series] = await Promise.all([
        getJson(`${ROOT}studies?${studyQ}`),
        getJson(`${ROOT}studies/${studyUid}/series?includefield=NumberOfSeriesRelatedInstances`),
      ]);
      if (seq !== studySeq) return;
      viewer.study.ds = studies[0] || {};
      document.title = `${text(viewer.study.ds, "PatientName")} - PACS`;
      series.sort((a, b) => (num(a, "SeriesNumber") ?? 1e9) - (num(b, "SeriesNumber") ?? 1e9));
      viewer.seriesList = series.map((ds) => ({
        uid: first(ds, "SeriesInstanceUID"), ds, modality: first(ds, "Modality") || "",
      }));
      renderStrip();
      status("");
      if (!series.length) {
        viewer.message(t("This study has no series."));
        return;
      }
      const want = params.get("series");
      const pick = viewer.seriesList.find((s) => s.uid === want)
        || viewer.seriesList.find((s) => !NON_IMAGE.has(s.modality)) || viewer.seriesList[0];
      await viewer.selectSeries(pick.uid, parseInt(params.get("i"), 10) || 0);
    } catch (e) {
      if (seq !== studySeq) return;
      viewer.message(t("Cannot open the study: {0}", e.message));
      status("");
    }
  }

  function renderStrip() {
    const list = $("#series-list");
    list.replaceChildren(...viewer.seriesList.map((s) => {
      const count = text(s.ds, "NumberOfSeriesRelatedInstances");
      const img = el("img", { alt: "", width: 96, height: 96, loading: "lazy" });
      const btn = el("button", {
        type: "button", class: "series", "data-series": s.uid, "aria-pressed": "false",
        onclick: () => {
          setHashParams({ series: s.uid, i: null });
          viewer.selectSeries(s.uid);
        },
      },
      el("span", { class: "thumb" }, img),
      el("span", { class: "series-text" },
        el("strong", {}, `${s.modality} ${text(s.ds, "SeriesNumber")}`.trim()),
        el("span", { class: "desc" }, text(s.ds, "SeriesDescription") || t("(no description)")),
        el("span", { class: "count" }, count ? t(count === "1" ? "{0} image" : "{0} images", count) : "")));
      if (!NON_IMAGE.has(s.modality)) {
        const url = `${ROOT}studies/${viewer.study.uid}/series/${s.uid}/thumbnail?viewport=128,128`;
        thumbs.load(url, url).then((e) => {
          img.src = e.url;
        }, () => btn.classList.add("no-thumb"));
      } else {
        btn.classList.add("no-thumb");
      }
      return el("li", {}, btn);
    }));
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

  // ------------------------------------------------------------ The stack viewer
  const viewport = $("#viewport");
  const imgEl = $("#image");
  const slider = $("#slider");

  const viewer = {
    study: null,
    seriesList: [],
    series: null, // {uid, modality, ds}
    stack: [], // [{sop, frame, frames, number, rows, cols}]
    meta: new Map(), // sop -> instance metadata dataset
    index: 0,
    window: null, // {c, w} explicit, or null for each instance's own (header) window
    preset: "",
    invert: false,
    lossless: localStorage.getItem("pacs.lossless") === "1",
    view: { scale: 1, tx: 0, ty: 0, fitted: true },
    tool: "window",
    shown: { key: null, seq: 0, index: -1 },
    seq: 0,
    cine: null,
    loadToken: 0,

    close() {
      this.loadToken++; // work still in flight for the previous study is dropped when it lands
      clearTimeout(this.urlTimer);
      this.stopCine();
      this.study = null;
      this.series = null;
      this.stack = [];
      this.meta = new Map();
      imgEl.hidden = true;
      imgEl.removeAttribute("src");
      for (const id of ["#ov-tl", "#ov-tr", "#ov-bl", "#ov-br", "#progress"]) {
        $(id).textContent = "";
        delete $(id).dataset.text;
      }
    },

    message(msg) {
      const m = $("#message");
      m.textContent = msg || "";
      m.hidden = !msg;
    },

    async selectSeries(uid, startIndex = 0) {
      const s = this.seriesList.find((x) => x.uid === uid);
      if (!s || !this.study) return;
      this.stopCine();
      clearTimeout(this.urlTimer);
      this.drawing = 0;
      this.redraw = false;
      const token = ++this.loadToken;
      this.series = s;
      this.stack = [];
      this.meta = new Map();
      this.window = null;
      this.preset = "";
      this.shown = { key: null, seq: 0, index: -1 };
      this.shownDims = "";
      for (const b of document.querySelectorAll(".series")) {
        b.setAttribute("aria-pressed", String(b.dataset.series === uid));
      }
      this.renderPresets(false);
      if (NON_IMAGE.has(s.modality)) {
        imgEl.hidden = true;
        this.message(t("{0} series: no images to display.", s.modality));
        this.renderOverlay();
        return;
      }
      this.message(t("Loading series…"));
      const base = `${ROOT}studies/${this.study.uid}/series/${uid}`;
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
      this.renderPresets();
      if (!stack.length) {
        this.message(t("This series has no images."));
        return;
      }
      this.message("");
      slider.max = String(stack.length - 1);
      slider.disabled = stack.length < 2;
      $("#cine").disabled = stack.length < 2;
      $("#fps").value = String(s.modality === "US" ? 25 : 15);
      this.view.fitted = true;
      const firstShown = new Promise((resolve) => {
        this.onShown = resolve;
      });
      this.setIndex(Math.min(Math.max(0, startIndex), stack.length - 1), { force: true });
      // On a slow link the first image must not share the line: neighbours, then metadata (WADO-RS,
      // PS3.18 10.4.1.1.2: overlay facts and header windows; megabytes for a long series) come after.
      await Promise.race([firstShown, new Promise((r) => setTimeout(r, 2000))]);
      if (token !== this.loadToken) return;
      this.prefetch();
      getJson(`${base}/metadata`).then((all) => {
        if (token !== this.loadToken) return;
        for (const ds of all) this.meta.set(first(ds, "SOPInstanceUID"), ds);
        const m = this.meta.get(stack[0].sop);
        const rate = num(m, "RecommendedDisplayFrameRate") || num(m, "CineRate")
          || (num(m, "FrameTime") ? 1000 / num(m, "FrameTime") : 0);
        if (rate) $("#fps").value = String(Math.round(Math.min(60, Math.max(1, rate))));
        this.renderPresets();
        this.renderOverlay();
      }, () => {});
    },

    /** The rendered-resource URL of stack item `i` under the current window (PS3.18 9.5.1.2). */
    urlOf(i, win = this.window) {
      const it = this.stack[i];
      const base = `${ROOT}studies/${this.study.uid}/series/${this.series.uid}/instances/${it.sop}`;
      const path = it.frames > 1 ? `${base}/frames/${it.frame}/rendered` : `${base}/rendered`;
      const q = new URLSearchParams();
      if (win) q.set("window", `${Math.round(win.c)},${Math.max(1, Math.round(win.w))},linear`);
      // An explicit quality for JPEG also keeps the JPEG and PNG URLs apart in HTTP caches.
      if (!this.lossless) q.set("quality", "90");
      const big = Math.max(it.rows, it.cols);
      if (big > 1024) {
        const k = 1024 / big;
        q.set("viewport", `${Math.round(it.cols * k)},${Math.round(it.rows * k)}`);
      }
      const qs = q.toString();
      return qs ? `${path}?${qs}` : path;
    },
    windowKey(win = this.window) {
      return win ? `${Math.round(win.c)},${Math.max(1, Math.round(win.w))}` : "header";
    },
    keyOf(i) {
      return `${this.series.uid}|${i}|${this.windowKey()}|${this.lossless ? "png" : "jpeg"}`;
    },
    /** JPEG (default: small, for slow links) or lossless PNG, chosen by the reader. */
    accept() {
      return this.lossless ? "image/png" : "image/jpeg";
    },
    load(i) {
      const info = { series: this.series.uid, index: i, wkey: this.windowKey(), fmt: this.accept() };
      return images.load(this.keyOf(i), this.urlOf(i), info, this.accept());
    },

    setIndex(i, { force = false } = {}) {
      if (!this.stack.length) return;
      i = Math.min(Math.max(0, i), this.stack.length - 1);
      if (i === this.index && !force) return;
      this.index = i;
      slider.value = String(i);
      $("#slider-out").textContent = `${i + 1} / ${this.stack.length}`;
      // The slice goes into the URL once scrolling pauses (browsers throttle history updates).
      clearTimeout(this.urlTimer);
      const series = this.series.uid;
      this.urlTimer = setTimeout(() => this.series && setHashParams({ series, i: i || null }), 250);
      this.renderOverlay();
      this.draw();
    },

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
      this.load(i)
        .then((e) => {
          if (i === this.index && this.series && seq > this.shown.seq) this.display(e, key, i, seq);
          this.renderProgress();
        }, (e) => {
          if (e.message !== "dropped" && i === this.index) this.message(t("Cannot show this image: {0}", e.message));
        })
        .finally(() => {
          this.drawing = 0;
          if (this.redraw) {
            this.redraw = false;
            if (this.series && this.stack.length) this.draw();
          }
        });
    },

    display(entry, key, i, seq) {
      const it = this.stack[i];
      this.shown = { key, seq, index: i };
      if (this.onShown) this.onShown();
      imgEl.src = entry.url;
      imgEl.width = it.cols;
      imgEl.height = it.rows;
      imgEl.dataset.index = String(i);
      imgEl.dataset.sop = it.sop;
      imgEl.dataset.frame = String(it.frame);
      imgEl.dataset.window = key.split("|")[2];
      imgEl.dataset.format = key.split("|")[3];
      imgEl.alt = t("Image {0}", `${it.number ?? i + 1}${it.frames > 1 ? ` / ${it.frame}` : ""}`);
      imgEl.hidden = false;
      this.message("");
      const dims = `${it.cols}x${it.rows}`;
      if (this.view.fitted && dims !== this.shownDims) this.fit();
      else this.applyView();
      this.shownDims = dims;
    },

    /** Queue every slice of the series, nearest to the current one first (the loader re-sorts as we scroll). */
    prefetch() {
      if (!this.stack.length) return;
      for (let i = 0; i < this.stack.length; i++) {
        if (!images.has(this.keyOf(i))) this.load(i).then(() => this.renderProgress(), () => {});
      }
      this.renderProgressNow();
    },
    renderProgress() {
      if (this.progressFrame) return;
      this.progressFrame = requestAnimationFrame(() => {
        this.progressFrame = 0;
        this.renderProgressNow();
      });
    },
    renderProgressNow() {
      if (!this.series || !this.stack.length) return;
      let n = 0;
      for (let i = 0; i < this.stack.length; i++) if (images.has(this.keyOf(i))) n++;
      $("#progress").textContent = n < this.stack.length ? t("Loading {0}/{1}", n, this.stack.length) : "";
    },

    currentMeta() {
      const it = this.stack[this.index];
      return it ? this.meta.get(it.sop) : undefined;
    },
    headerWindow() {
      const m = this.currentMeta();
      const c = num(m, "WindowCenter");
      const w = num(m, "WindowWidth");
      return c !== undefined && w ? { c, w } : null;
    },
    effectiveWindow() {
      return this.window || this.headerWindow();
    },

    setWindow(win, preset = "") {
      this.window = win;
      this.preset = preset;
      $("#preset").value = preset || (win ? "custom" : "");
      this.renderOverlay();
      this.draw();
    },

    /** Window presets fit greyscale images only; colour (US, ES) is shown as stored. */
    isColor() {
      const it = this.stack[this.index] || this.stack[0];
      return Boolean(it && it.color);
    },
    renderPresets(enabled = true) {
      const sel = $("#preset");
      sel.disabled = !enabled || this.isColor();
      const opts = [el("option", { value: "" }, t("Default (header)"))];
      if (this.series && this.series.modality === "CT") {
        CT_PRESETS.forEach(([id, label, c, w], n) =>
          opts.push(el("option", { value: id }, `${n + 1} ${t(label)} (${c}/${w})`)));
      }
      opts.push(el("option", { value: "custom", disabled: true }, t("Custom")));
      sel.replaceChildren(...opts);
      sel.value = this.preset || (this.window ? "custom" : "");
    },
    applyPreset(id) {
      if (!id) return this.setWindow(null, "");
      const p = CT_PRESETS.find((x) => x[0] === id);
      if (p) this.setWindow({ c: p[2], w: p[3] }, id);
      this.prefetch();
    },

    renderOverlay() {
      const st = (this.study && this.study.ds) || {};
      const it = this.stack[this.index];
      const m = this.currentMeta();
      const s = this.series;
      const lines = (id, ls) => {
        const node = $(id);
        const shown = ls.filter(Boolean);
        const key = shown.join("\n");
        if (node.dataset.text === key) return; // unchanged: no DOM work while scrolling
        node.dataset.text = key;
        node.replaceChildren(...shown.map((t) => el("div", {}, t)));
      };
      const bits = [fmtDate(first(st, "PatientBirthDate")), text(st, "PatientSex")].filter(Boolean).join(" ");
      lines("#ov-tl", [text(st, "PatientName"), text(st, "PatientID") && `ID: ${text(st, "PatientID")}`, bits]);
      lines("#ov-tr", [
        text(m || st, "InstitutionName"),
        text(st, "StudyDescription"),
        [fmtDate(first(st, "StudyDate")), fmtTime(first(st, "StudyTime"))].filter(Boolean).join(" "),
        text(st, "AccessionNumber") && `Acc: ${text(st, "AccessionNumber")}`,
      ]);
      if (!s) return;
      const loc = num(m, "SliceLocation");
      const thick = num(m, "SliceThickness");
      lines("#ov-bl", [
        `Se: ${text(s.ds, "SeriesNumber") || "?"} ${s.modality} ${text(s.ds, "SeriesDescription")}`.trim(),
        it && (it.frames > 1 ? `Im: ${it.number ?? "?"}` : `Im: ${it.number ?? "?"}  (${this.index + 1}/${this.stack.length})`),
        it && it.frames > 1 && `Frame: ${it.frame}/${it.frames}`,
        loc !== undefined && `Loc: ${loc.toFixed(1)} mm${thick ? `  Thk: ${thick} mm` : ""}`,
      ]);
      const win = this.effectiveWindow();
      const label = this.preset ? ` ${t(CT_PRESETS.find((p) => p[0] === this.preset)?.[1] || "")}` : "";
      lines("#ov-br", [
        win ? `W: ${Math.round(win.w)} L: ${Math.round(win.c)}${label}` : t("W/L: as stored"),
        this.lossless ? t("Lossless") : "JPEG",
        `Zoom: ${Math.round(this.view.scale * 100)}%`,
        this.invert && t("Inverted"),
      ]);
    },

    // ---- geometry: zoom, pan, fit (client side; the pixels come from the server)
    fit() {
      const it = this.stack[this.index];
      if (!it) return;
      const r = viewport.getBoundingClientRect();
      const scale = Math.min(r.width / it.cols, r.height / it.rows) || 1;
      this.view = { scale, tx: 0, ty: 0, fitted: true };
      this.applyView();
    },
    applyView() {
      const { scale, tx, ty } = this.view;
      imgEl.style.transform = `translate(-50%, -50%) translate(${tx}px, ${ty}px) scale(${scale})`;
      imgEl.classList.toggle("inverted", this.invert);
      this.renderOverlay();
    },
    zoomBy(factor, cx, cy) {
      const r = viewport.getBoundingClientRect();
      const px = (cx ?? r.left + r.width / 2) - (r.left + r.width / 2);
      const py = (cy ?? r.top + r.height / 2) - (r.top + r.height / 2);
      const v = this.view;
      const next = Math.min(20, Math.max(0.05, v.scale * factor));
      const k = next / v.scale;
      // Keep the point under the cursor where it is.
      this.view = { scale: next, tx: px - (px - v.tx) * k, ty: py - (py - v.ty) * k, fitted: false };
      this.applyView();
    },

    // ---- cine (multi-frame ultrasound, or any stack)
    toggleCine() {
      if (this.cine) this.stopCine();
      else this.startCine();
    },
    startCine() {
      if (this.stack.length < 2) return;
      $("#cine").setAttribute("aria-pressed", "true");
      $("#cine").textContent = t("❚❚ Pause");
      let last = performance.now();
      const tick = (now) => {
        if (!this.cine) return;
        const fps = Math.min(60, Math.max(1, parseFloat($("#fps").value) || 15));
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
    },
    stopCine() {
      if (this.cine) cancelAnimationFrame(this.cine);
      this.cine = null;
      $("#cine").setAttribute("aria-pressed", "false");
      $("#cine").textContent = t("▶ Cine");
    },
  };

  // Loader priority: current series and window only, nearest slice first, slightly favouring ahead.
  images.priority = (job) => {
    const { info } = job;
    if (!viewer.series || info.series !== viewer.series.uid || info.wkey !== viewer.windowKey()
      || info.fmt !== viewer.accept()) return Infinity;
    const d = info.index - viewer.index;
    return d >= 0 ? d : -d * 1.5;
  };

  // ------------------------------------------------------------ Viewer input: wheel, keys, drag, slider
  let wheelAcc = 0;
  viewport.addEventListener("wheel", (ev) => {
    if (!viewer.stack.length) return;
    ev.preventDefault();
    if (ev.ctrlKey) {
      viewer.zoomBy(Math.exp(-ev.deltaY / 300), ev.clientX, ev.clientY);
      return;
    }
    wheelAcc += ev.deltaMode === 1 ? ev.deltaY * 33 : ev.deltaMode === 2 ? ev.deltaY * 400 : ev.deltaY;
    // One wheel notch (~100 px) is one slice; a trackpad's small deltas add up to one.
    if (Math.abs(wheelAcc) >= 50) {
      const steps = Math.sign(wheelAcc) * Math.max(1, Math.round(Math.abs(wheelAcc) / 100));
      wheelAcc = 0;
      viewer.setIndex(viewer.index + steps);
    }
  }, { passive: false });

  slider.addEventListener("input", () => viewer.setIndex(parseInt(slider.value, 10)));

  document.addEventListener("keydown", (ev) => {
    if ($("#study-view").hidden || $("#login").open || $("#help").open || ev.altKey || ev.metaKey || ev.ctrlKey) {
      return;
    }
    const t = ev.target;
    if (t !== slider && t.closest && t.closest("input, select, textarea")) return;
    const step = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 }[ev.key];
    let handled = true;
    if (step !== undefined) viewer.setIndex(viewer.index + step);
    else if (ev.key === "Home") viewer.setIndex(0);
    else if (ev.key === "End") viewer.setIndex(viewer.stack.length - 1);
    else if (ev.key === " " && !(t.closest && t.closest("button"))) viewer.toggleCine();
    else if (ev.key === "i" || ev.key === "I") $("#invert").click();
    else if (ev.key === "f" || ev.key === "F") viewer.fit();
    else if (ev.key === "r" || ev.key === "R") $("#reset").click();
    else if (ev.key === "w" || ev.key === "W") setTool("window");
    else if (ev.key === "p" || ev.key === "P") setTool("pan");
    else if (ev.key === "z" || ev.key === "Z") setTool("zoom");
    else if (ev.key === "?") $("#help").showModal();
    else if (ev.key === "+" || ev.key === "=") viewer.zoomBy(1.25);
    else if (ev.key === "-") viewer.zoomBy(0.8);
    else if (ev.key === "0" && !viewer.isColor()) viewer.applyPreset("");
    else if (/^[1-5]$/.test(ev.key) && viewer.series && viewer.series.modality === "CT" && !viewer.isColor()) {
      viewer.applyPreset(CT_PRESETS[+ev.key - 1][0]);
    } else handled = false;
    if (handled) ev.preventDefault();
  });

  function setTool(tool) {
    viewer.tool = tool;
    for (const b of document.querySelectorAll(".tool")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
    viewport.dataset.tool = tool;
  }
  for (const b of document.querySelectorAll(".tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  setTool("window");

  let drag = null;
  viewport.addEventListener("contextmenu", (ev) => ev.preventDefault());
  viewport.addEventListener("pointerdown", (ev) => {
    if (!viewer.stack.length) return;
    viewport.focus();
    let mode = ev.button === 1 ? "pan" : ev.button === 2 ? "zoom" : viewer.tool;
    if (mode === "window" && viewer.isColor()) mode = "pan"; // no window on colour images
    const win = viewer.effectiveWindow() || { c: 128, w: 256 };
    drag = { mode, x: ev.clientX, y: ev.clientY, win: { ...win }, view: { ...viewer.view }, moved: false };
    viewport.setPointerCapture(ev.pointerId);
    ev.preventDefault();
  });
  viewport.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x;
    const dy = ev.clientY - drag.y;
    drag.moved = drag.moved || Math.abs(dx) + Math.abs(dy) > 2;
    if (!drag.moved) return;
    if (drag.mode === "window") {
      const k = Math.max(0.5, drag.win.w / 250);
      const win = { c: drag.win.c + dy * k, w: Math.max(1, drag.win.w + dx * k) };
      if (!drag.frame) {
        drag.frame = requestAnimationFrame(() => {
          if (!drag) return;
          drag.frame = 0;
          viewer.setWindow(drag.pending, ""); // the latest position, not the first of this frame
        });
      }
      drag.pending = win;
    } else if (drag.mode === "pan") {
      viewer.view = { ...drag.view, tx: drag.view.tx + dx, ty: drag.view.ty + dy, fitted: false };
      viewer.applyView();
    } else if (drag.mode === "zoom") {
      viewer.view = { ...drag.view, fitted: false };
      viewer.zoomBy(Math.exp(-dy / 150)); // about the centre of the viewport
    }
  });
  const endDrag = () => {
    if (!drag) return;
    if (drag.mode === "window" && drag.pending) {
      if (drag.frame) cancelAnimationFrame(drag.frame);
      viewer.setWindow(drag.pending, "");
      viewer.prefetch();
    }
    drag = null;
  };
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  $("#preset").addEventListener("change", (ev) => viewer.applyPreset(ev.target.value));
  $("#invert").addEventListener("click", () => {
    viewer.invert = !viewer.invert;
    $("#invert").setAttribute("aria-pressed", String(viewer.invert));
    viewer.applyView();
  });
  $("#fit").addEventListener("click", () => viewer.fit());
  $("#reset").addEventListener("click", () => {
    viewer.invert = false;
    $("#invert").setAttribute("aria-pressed", "false");
    viewer.setWindow(null, "");
    viewer.fit();
    viewer.prefetch();
  });
  $("#cine").addEventListener("click", () => viewer.toggleCine());
  $("#help-btn").addEventListener("click", () => $("#help").showModal());
  $("#lossless").setAttribute("aria-pressed", String(viewer.lossless));
  $("#lossless").addEventListener("click", () => {
    viewer.lossless = !viewer.lossless;
    localStorage.setItem("pacs.lossless", viewer.lossless ? "1" : "0");
    $("#lossless").setAttribute("aria-pressed", String(viewer.lossless));
    viewer.renderOverlay();
    viewer.draw();
    viewer.prefetch();
  });
  window.addEventListener("resize", () => {
    if (viewer.view.fitted && viewer.stack.length) viewer.fit();
  });

  route();
})();
