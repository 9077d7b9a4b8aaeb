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

function numberOrNull(value) {
  return value.trim() === "" ? null : Number(value);
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

async function runSearch(event) {
  if (event) event.preventDefault();
  const query = $("query").value.trim();
  const file = photoInput.files[0] || null;
  const filters = currentFilters();
  const sort = $("sort").value;
  const problems = checkInputs(query, file, filters);
  if (problems.length) { showError(problems); return; }
  showError(null);

  let request;
  if (file) {
    const data = new FormData();
    data.append("file", file);
    if (query) data.append("text", query);
    data.append("sort", sort);
    for (const [key, value] of Object.entries(filters)) if (value !== null) data.append(key, String(value));
    request = fetchJson("/search/image", { method: "POST", body: data });
  } else {
    request = fetchJson("/search/text", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, filters, sort }),
    });
  }

  const button = $("search-button");
  button.disabled = true;
  $("summary").textContent = "Searching…";
  try {
    renderResults(await request);
  } catch (err) {
    $("summary").textContent = "";
    $("results").replaceChildren();  // results of an earlier query would look like answers to this one
    $("predicted").hidden = true;
    showError(err.messages || ["Something went wrong. Please try again."]);
  } finally {
    button.disabled = false;
  }
}

function renderResults(data) {
  const results = $("results");
  results.replaceChildren();
  const what = { text: "words", image: "photo", "image+text": "photo and words" }[data.query_type] || "query";
  const ms = data.timings_ms && data.timings_ms.service_total;
  $("summary").textContent = data.count + (data.count === 1 ? " result" : " results") + " for your " + what +
    (ms ? " (" + Math.round(ms) + " ms)" : "");

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

  if (!data.hits.length) {
    results.append(el("p", "empty", "No listings match. Try fewer words or wider filters."));
    return;
  }
  data.hits.forEach((hit) => results.append(resultCard(hit.listing)));
}

function resultCard(listing) {
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
  const open = () => showListing(listing.url);
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
  } catch (err) {
    box.replaceChildren(el("p", "banner error", (err.messages || ["Could not load the listing."]).join(" ")));
  }
}

function updatePhotoLabel() {
  const file = photoInput.files[0];
  $("photo-label").textContent = file ? file.name : "Photo";
  document.querySelector(".photo-button").classList.toggle("active", Boolean(file));
  $("clear-photo").hidden = !file;
  $("query").placeholder = file ? "Optional words to go with the photo, e.g. in red" : "What are you looking for? e.g. oak dining table";
}

async function loadCategories() {
  try {
    const data = await fetchJson("/categories");
    const select = $("category");
    data.data.forEach((name) => { const option = el("option", null, name); option.value = name; select.append(option); });
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

form.addEventListener("submit", runSearch);
photoInput.addEventListener("change", () => { updatePhotoLabel(); if (photoInput.files[0]) runSearch(); });
$("clear-photo").addEventListener("click", () => { photoInput.value = ""; updatePhotoLabel(); });
for (const id of ["category", "sort"]) $(id).addEventListener("change", () => { if ($("query").value.trim() || photoInput.files[0]) runSearch(); });
loadCategories();
checkHealth();
