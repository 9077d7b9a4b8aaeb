// The search page: plain DOM, fetch and FormData. Data from the API is only ever set as text.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const photoInput = $("photo");

function formatPrice(price) {
  if (price === null || price === undefined) return "Price not given";
  if (price === 0) return "Free";
  return "£" + price.toLocaleString("en-GB", { minimumFractionDigits: price % 1 ? 2 : 0, maximumFractionDigits: 2 });
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// FastAPI errors: {"detail": "message"} or, for 422, {"detail": [{loc, msg}, ...]}.
function errorMessages(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const where = (d.loc || []).filter((part) => part !== "body").join(" > ");
      return (where ? where + ": " : "") + String(d.msg || "invalid value").replace(/^Value error, /, "");
    });
  }
  if (typeof detail === "string") return [detail];
  return ["The server answered " + status + ". Please try again."];
}

const capitalise = (text) => text.charAt(0).toUpperCase() + text.slice(1);

function showError(messages) {
  const box = $("error");
  box.replaceChildren();
  if (!messages) { box.hidden = true; return; }
  messages = messages.map((m) => capitalise(String(m)));
  if (messages.length === 1) {
    box.textContent = messages[0];
  } else {
    box.append(el("span", null, "Please fix the following:"));
    const list = el("ul");
    messages.forEach((m) => list.append(el("li", null, m)));
    box.append(list);
  }
  box.hidden = false;
}

async function fetchJson(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw { messages: ["Could not reach the search service. Check your connection and try again."] };
  }
  let body = null;
  try { body = await response.json(); } catch (err) { /* not JSON */ }
  if (!response.ok) throw { status: response.status, messages: errorMessages(response.status, body) };
  return body;
}

// Interaction events (POST /events): what the page shows (impressions) and what the buyer opens (clicks), under
// a user id kept in this browser. Fire and forget: search works the same when they cannot be sent.
const USER_KEY = "marketsearch.user_id";

function randomHex() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));  // also outside secure contexts, unlike randomUUID
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const userId = (() => {
  try {
    let id = localStorage.getItem(USER_KEY);
    if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/.test(id || "")) localStorage.setItem(USER_KEY, (id = "u-" + randomHex()));
    return id;
  } catch (err) {
    return "u-" + randomHex();  // storage blocked: an id for this page only
  }
})();

// The API key of this browser (writes need one: `marketsearch keys create`), kept in localStorage. Its scope decides
// what it allows: listings:write sells, events:write sends events, admin both.
const API_KEY = "marketsearch.api_key";
const KEY_HELP = "Selling and sending events need an API key: create one with `marketsearch keys create --scope " +
  "listings:write --seller YOUR_ID` (selling), `--scope events:write` (events) or `--scope admin` (both), then paste it here.";

function apiKey() {
  try { return (localStorage.getItem(API_KEY) || "").trim(); } catch (err) { return $("api-key").value.trim(); }
}

function authorised(headers) {
  return { ...headers, Authorization: "Bearer " + apiKey() };
}

function sendEvents(type, items) {
  if (!apiKey()) return;  // events need a key: without one the page sends none
  const now = new Date().toISOString();
  const events = items.map((item) => ({
    event_id: randomHex(), user_id: userId, listing_id: item.listingId, type, occurred_at: now,
    query_id: item.queryId || null, position: item.position || null,
  }));
  // keepalive: a click's event still goes out when the buyer leaves the page right after
  fetch("/events", {
    method: "POST", headers: authorised({ "Content-Type": "application/json" }), body: JSON.stringify({ events }),
    keepalive: true,
  }).catch(() => {});
}

function numberOrNull(value) {
  return value.trim() === "" ? null : Number(value);
}

const PAGE_SIZE = 20;
const MAX_OFFSET = 1000;  // the API's bound on offset
const LAST_PAGE = Math.floor(MAX_OFFSET / PAGE_SIZE) + 1;
const DEFAULT_SORT = "relevance";

// A search as the URL holds it: q, category, min_price, max_price, location, sort, page, and photo=1 for a
// photo search (the photo itself cannot live in a URL, so such a link restores only the words and filters).
function searchFromForm(page) {
  return {
    query: $("query").value.trim(),
    category: $("category").value,
    min_price: $("min-price").value.trim(),
    max_price: $("max-price").value.trim(),
    location: $("location").value.trim(),
    sort: $("sort").value,
    page: page,
    photo: Boolean(photoInput.files[0]),
  };
}

function searchToUrl(search) {
  const params = new URLSearchParams();
  if (search.query) params.set("q", search.query);
  for (const name of ["category", "min_price", "max_price", "location"]) if (search[name]) params.set(name, search[name]);
  if (search.sort !== DEFAULT_SORT) params.set("sort", search.sort);
  if (search.page > 1) params.set("page", String(search.page));
  if (search.photo) params.set("photo", "1");
  const query = params.toString();
  return location.pathname + (query ? "?" + query : "");
}

function searchFromUrl() {
  const params = new URLSearchParams(location.search);
  const page = Number(params.get("page"));
  const sort = params.get("sort");
  const sorts = Array.from($("sort").options, (option) => option.value);
  return {
    query: (params.get("q") || "").trim(),
    category: params.get("category") || "",
    min_price: params.get("min_price") || "",
    max_price: params.get("max_price") || "",
    location: params.get("location") || "",
    sort: sorts.includes(sort) ? sort : DEFAULT_SORT,
    page: Number.isInteger(page) && page >= 1 ? Math.min(page, LAST_PAGE) : 1,
    photo: params.get("photo") === "1",
  };
}

function fillForm(search) {
  $("query").value = search.query;
  const select = $("category");
  if (search.category && !Array.from(select.options).some((option) => option.value === search.category)) {
    const option = el("option", null, search.category);  // a category the list does not have (yet): keep it
    option.value = search.category;
    select.append(option);
  }
  select.value = search.category;
  $("min-price").value = search.min_price;
  $("max-price").value = search.max_price;
  $("location").value = search.location;
  $("sort").value = search.sort;
}

function currentFilters() {
  return {
    category: $("category").value || null,
    min_price: numberOrNull($("min-price").value),
    max_price: numberOrNull($("max-price").value),
    location: $("location").value.trim() || null,
  };
}

function checkInputs(query, file, filters) {
  const problems = [];
  if (!query && !file) problems.push("Type what you are looking for, or choose a photo.");
  for (const [name, value] of [["Min price", filters.min_price], ["Max price", filters.max_price]]) {
    if (value !== null && (!Number.isFinite(value) || value < 0)) problems.push(name + " must be a number of 0 or more.");
  }
  if (filters.min_price !== null && filters.max_price !== null && filters.min_price > filters.max_price) {
    problems.push("Min price is above max price.");
  }
  return problems;
}

// Results of an earlier search would look like answers to the one that failed or has not run.
function clearResults() {
  $("summary").textContent = "";
  $("results").replaceChildren();
  $("predicted").hidden = true;
  $("pager").hidden = true;
}

let latestSearch = 0;  // answers to searches overtaken by a newer one are dropped
let shownPage = 1;  // the page of the results on screen, for Previous and Next

// Runs the form's search at `page`; `historyMode` is "push" (a new search) or "none" (restoring one from the URL).
async function runSearch(page = 1, historyMode = "push") {
  const search = searchFromForm(page);
  const query = search.query;
  const file = photoInput.files[0] || null;
  const filters = currentFilters();
  const problems = checkInputs(query, file, filters);
  $("restore-note").hidden = true;
  if (problems.length) { clearResults(); showError(problems); return; }
  showError(null);

  const url = searchToUrl(search);
  if (historyMode === "push" && url !== location.pathname + location.search) history.pushState(null, "", url);

  const offset = (page - 1) * PAGE_SIZE;
  let request;
  if (file) {
    const data = new FormData();
    data.append("file", file);
    if (query) data.append("text", query);
    data.append("sort", search.sort);
    data.append("k", String(PAGE_SIZE));
    data.append("offset", String(offset));
    data.append("user_id", userId);  // ranked for this buyer when the recommenders know them
    for (const [key, value] of Object.entries(filters)) if (value !== null) data.append(key, String(value));
    request = fetchJson("/search/image", { method: "POST", body: data });
  } else {
    request = fetchJson("/search/text", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, filters, sort: search.sort, k: PAGE_SIZE, offset, user_id: userId }),
    });
  }

  const mine = ++latestSearch;
  const button = $("search-button");
  button.disabled = true;
  $("summary").textContent = "Searching…";
  try {
    const data = await request;
    if (mine === latestSearch) renderResults(data, page);
  } catch (err) {
    if (mine === latestSearch) {
      clearResults();
      showError(err.messages || ["Something went wrong. Please try again."]);
    }
  } finally {
    if (mine === latestSearch) button.disabled = false;
  }
}

function renderResults(data, page) {
  shownPage = page;
  const results = $("results");
  results.replaceChildren();
  const what = { text: "words", image: "photo", "image+text": "photo and words" }[data.query_type] || "query";
  const ms = data.timings_ms && data.timings_ms.service_total;
  const total = data.total_candidates;
  const shown = data.count
    ? (data.offset > 0 || data.offset + data.count < total
      ? (data.offset + 1) + "–" + (data.offset + data.count) + " of " + total + " results"
      : data.count + (data.count === 1 ? " result" : " results"))
    : "No results";
  $("summary").textContent = shown + " for your " + what + (ms ? " (" + Math.round(ms) + " ms)" : "");

  const predicted = $("predicted");
  predicted.replaceChildren();
  if (data.predicted_category) {
    predicted.append(el("span", null, "Looks like:"));
    data.category_probs.slice(0, 3).forEach((c, i) => {
      predicted.append(el("span", "chip" + (i === 0 ? " top" : ""), c.category + " " + Math.round(c.probability * 100) + "%"));
    });
    predicted.hidden = false;
  } else {
    predicted.hidden = true;
  }

  const hasNext = data.offset + PAGE_SIZE < total && page < LAST_PAGE;
  $("prev-page").disabled = page <= 1;
  $("next-page").disabled = !hasNext;
  const pages = Math.min(Math.max(1, Math.ceil(total / PAGE_SIZE)), LAST_PAGE);
  $("page-info").textContent = "Page " + page + " of " + Math.max(pages, page);
  $("pager").hidden = page <= 1 && !hasNext;

  if (!data.hits.length) {
    const message = data.offset > 0
      ? "No more results: this search has " + total + "."
      : "No listings match. Try fewer words or wider filters.";
    results.append(el("p", "empty", message));
    return;
  }
  const displayed = data.hits.map((hit) => ({ listingId: hit.listing.id, queryId: data.query_id, position: hit.rank }));
  data.hits.forEach((hit, i) => results.append(resultCard(hit.listing, () => sendEvents("click", [displayed[i]]))));
  sendEvents("impression", displayed);
}

function resultCard(listing, onOpen) {
  const card = el("article", "card");
  card.tabIndex = 0;
  card.dataset.listingId = listing.id;
  const thumb = el("div", "thumb");
  if (listing.thumbnail_url) {
    const img = el("img");
    img.src = listing.thumbnail_url;
    img.alt = listing.title;
    img.loading = "lazy";
    thumb.append(img);
  } else {
    thumb.textContent = "No photo";
  }
  const body = el("div", "card-body");
  body.append(
    el("div", "card-title", listing.title),
    el("div", "card-price", formatPrice(listing.price)),
    el("div", "card-meta card-location", listing.location),
    el("div", "card-meta card-category", listing.category),
  );
  card.append(thumb, body);
  const open = () => { onOpen(); showListing(listing.url); };
  card.addEventListener("click", open);
  card.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return card;
}

async function showListing(url) {
  const box = $("listing-detail");
  box.replaceChildren(el("p", null, "Loading…"));
  $("listing-dialog").showModal();
  try {
    const listing = await fetchJson(url);
    const photos = el("div", "detail-photos");
    listing.photos.forEach((p) => { const img = el("img"); img.src = p.url; img.alt = listing.title; photos.append(img); });
    box.replaceChildren(
      el("h2", null, listing.title),
      el("div", "card-price", formatPrice(listing.price)),
      el("div", "card-meta", listing.location + " · " + listing.category),
      photos,
      el("p", "detail-description", listing.description),
    );
    showSimilar(listing.id, box);  // recs.js
  } catch (err) {
    box.replaceChildren(el("p", "banner error", (err.messages || ["Could not load the listing."]).join(" ")));
  }
}

// What the next search will use, shown whenever a photo is chosen: "photo x.jpg + words ..." with a way to
// remove either, so a photo picked while words are in the box visibly becomes a photo-and-words search.
function updateQueryParts() {
  const file = photoInput.files[0];
  const words = $("query").value.trim();
  $("photo-label").textContent = file ? "Change photo" : "Photo";
  document.querySelector(".photo-button").classList.toggle("active", Boolean(file));
  $("query-parts").hidden = !file;
  $("photo-name").textContent = file ? file.name : "";
  $("words-text").textContent = "“" + words + "”";
  $("words-part").hidden = $("words-part-joiner").hidden = !(file && words);
  $("words-hint").hidden = !(file && !words);
  $("query").placeholder = file ? "Optional words to go with the photo, e.g. in red" : "What are you looking for? e.g. oak dining table";
}

function searchIfAnything() {
  if ($("query").value.trim() || photoInput.files[0]) runSearch();
  else { clearResults(); showError(null); history.pushState(null, "", location.pathname); }
}

// Restores the search a URL describes: on opening a shared link, on reload and on back/forward.
function restoreFromUrl() {
  const search = searchFromUrl();
  fillForm(search);
  showError(null);
  if (search.photo && !photoInput.files[0]) {
    clearResults();
    $("restore-note").hidden = false;
  } else {
    if (!search.photo && photoInput.files[0]) photoInput.value = "";
    $("restore-note").hidden = true;
    if (search.query || search.photo) runSearch(search.page, "none");
    else clearResults();
  }
  updateQueryParts();
}

async function loadCategories() {
  try {
    const data = await fetchJson("/categories");
    const select = $("category");
    data.data.forEach((name) => { const option = el("option", null, name); option.value = name; select.append(option); });
    data.data.forEach((name) => { const option = el("option"); option.value = name; $("category-list").append(option); });
  } catch (err) { /* the health banner explains an unavailable service */ }
}

async function checkHealth() {
  const banner = $("service-banner");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    if (body.status !== "ok") {
      banner.textContent = "Search is not available yet: " + (body.detail || "the service is still starting.");
      banner.hidden = false;
    }
  } catch (err) {
    banner.textContent = "Could not reach the search service.";
    banner.hidden = false;
  }
}

form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
$("query").addEventListener("input", updateQueryParts);
photoInput.addEventListener("change", () => { updateQueryParts(); if (photoInput.files[0]) runSearch(); });
$("clear-photo").addEventListener("click", () => { photoInput.value = ""; updateQueryParts(); searchIfAnything(); });
$("clear-words").addEventListener("click", () => { $("query").value = ""; updateQueryParts(); searchIfAnything(); });
for (const id of ["category", "sort"]) $(id).addEventListener("change", () => { if ($("query").value.trim() || photoInput.files[0]) runSearch(); });
$("prev-page").addEventListener("click", () => { runSearch(shownPage - 1); form.scrollIntoView(); });
$("next-page").addEventListener("click", () => { runSearch(shownPage + 1); form.scrollIntoView(); });
window.addEventListener("popstate", restoreFromUrl);
loadCategories().then(restoreFromUrl);  // the category list first, so a URL's category can be selected
checkHealth();

// "Sell an item": the fields and photos as multipart to POST /listings, with the key of the box above. One
// Idempotency-Key per filled-in form: sending the same form again (a retry) cannot list the item twice.
const keyInput = $("api-key");
const sellForm = $("sell-form");
let sellAttempt = randomHex();

function showKeyNote() {
  $("key-note").textContent = apiKey() ? "Kept in this browser; also used to send your search events." : KEY_HELP;
}

function showSellResult(kind, messages, listing) {
  const box = $("sell-result");
  box.replaceChildren();
  box.className = "banner " + kind;
  messages.forEach((m) => box.append(el("div", null, capitalise(String(m)))));
  if (listing) box.dataset.listingId = listing.id; else delete box.dataset.listingId;
  box.hidden = false;
}

keyInput.value = apiKey();
keyInput.addEventListener("input", () => {
  try { localStorage.setItem(API_KEY, keyInput.value.trim()); } catch (err) { /* storage blocked: this page only */ }
  showKeyNote();
});
sellForm.addEventListener("input", () => { sellAttempt = randomHex(); });
sellForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!apiKey()) { showSellResult("error", [KEY_HELP]); return; }
  const data = new FormData();
  for (const name of ["title", "description", "price", "category", "location"]) data.append(name, $("sell-" + name).value);
  for (const file of $("sell-photos").files) data.append("photos", file);
  $("sell-button").disabled = true;
  try {
    const listing = await fetchJson("/listings", {
      method: "POST", headers: authorised({ "Idempotency-Key": sellAttempt }), body: data,
    });
    showSellResult("ok", ["Listed “" + listing.title + "” (id " + listing.id + "): it shows in search within seconds."], listing);
    sellForm.reset();
    sellAttempt = randomHex();
  } catch (err) {
    showSellResult("error", err.messages || ["Could not list the item."]);
  } finally {
    $("sell-button").disabled = false;
  }
});
showKeyNote();
