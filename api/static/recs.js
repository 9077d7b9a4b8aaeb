"use strict";
// Recommendations on the page: "Recommended for you" (GET /users/{id}/recommendations, for this browser's user
// id from app.js) and "Similar listings" under a listing's details (GET /listings/{id}/similar). Both are
// optional: when the service has no recommenders (503) or nothing to show, their sections stay hidden. What they
// show is reported like search results: impressions, and a click when a card is opened.

function recommendationCard(item) {
  const shown = { listingId: item.listing.id, position: item.rank };
  const card = resultCard(item.listing, () => sendEvents("click", [shown]));
  if (item.reason) card.querySelector(".card-body").append(el("div", "card-meta card-reason", item.reason));
  return card;
}

async function showRecommendations() {
  const section = $("for-you");
  try {
    const data = await fetchJson("/users/" + encodeURIComponent(userId) + "/recommendations?k=8");
    if (!data.results.length) { section.hidden = true; return; }
    $("for-you-list").replaceChildren(...data.results.map(recommendationCard));
    section.hidden = false;
    sendEvents("impression", data.results.map((r) => ({ listingId: r.listing.id, position: r.rank })));
  } catch (err) {
    section.hidden = true;
  }
}

// Called by app.js's showListing once the details are on screen.
async function showSimilar(listingId, box) {
  try {
    const data = await fetchJson("/listings/" + encodeURIComponent(listingId) + "/similar?k=6");
    if (!data.results.length || !box.isConnected) return;
    const list = el("div", "results similar-list");
    list.append(...data.results.map(recommendationCard));
    const section = el("section", "similar");
    section.id = "similar";
    section.append(el("h3", null, "Similar listings"), list);
    box.append(section);
    sendEvents("impression", data.results.map((r) => ({ listingId: r.listing.id, position: r.rank })));
  } catch (err) { /* no recommenders, or the listing is gone: the details stand alone */ }
}

showRecommendations();
