// The status page: polls `status` (GET /status) and draws it. Read-only: nothing here
// sends anything but that GET. Every value from the server is set as text
// (textContent, title, dataset), never parsed as HTML: names come from resources that
// tenants write.
"use strict";

const POLL_MS = 2000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function badge(text, kind) {
  return el("span", "badge " + kind, text);
}

// "in 3h 20m", "5m ago", from milliseconds relative to the server's now.
function relative(ms) {
  const future = ms > 0;
  let s = Math.round(Math.abs(ms) / 1000);
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (s >= size && parts.length < 2) {
      parts.push(Math.floor(s / size) + unit);
      s %= size;
    }
  }
  const span = parts.length ? parts.join(" ") : "0s";
  return future ? "in " + span : span + " ago";
}

function when(iso, now) {
  if (!iso) return el("span", "muted", "—");
  const node = el("span", "", relative(Date.parse(iso) - now));
  node.title = iso;
  return node;
}

function duration(seconds) {
  return relative(seconds * 1000).replace(/^in /, "");
}

function percent(value) {
  return (Math.round(value * 1000) / 1000) + "%";
}

function condition(status, type) {
  return (status.conditions || []).find((c) => c.type === type);
}

function policyCard(policy, now) {
  const status = policy.status || {};
  const id = policy.namespace + "/" + policy.name;
  const effective = status.effectivePercentage || 0;
  const rollout = status.rollout || null;
  const steps = rollout ? rollout.steps : [];
  const paused = status.paused === true;

  const card = el("div", "card policy");
  card.dataset.policy = id;
  card.dataset.effective = String(effective);
  const title = el("h3", "", id + " ");
  title.append(badge(policy.mode, policy.mode));
  const ready = condition(status, "Ready");
  if (ready && ready.status !== "True") {
    const notReady = badge("not ready", "notready");
    notReady.title = ready.message || "";
    title.append(" ", notReady);
  }
  if (paused) title.append(" ", badge("paused", "paused"));
  card.append(title);

  const summary = el("div", "row");
  summary.append(el("strong", "effective", percent(effective) + " of users enforced now"));
  if (steps.length) {
    const current = Math.min(rollout.step + 1, steps.length);
    summary.append(el("span", "", "steps " + steps.map(percent).join(" → ") + " (step " + current + " of " + steps.length + ")"));
  }
  if (status.nextStepAt && !paused) {
    const next = el("span", "", "next step ");
    next.append(when(status.nextStepAt, now));
    summary.append(next);
  } else if (steps.length && !paused && effective >= steps[steps.length - 1]) {
    summary.append(el("span", "muted", "last step reached"));
  }
  card.append(summary);
  if (paused) card.append(el("div", "row paused-reason", "paused: " + (status.pausedReason || "")));

  const bar = el("div", paused ? "bar paused" : "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(effective));
  const fill = el("div", "fill");
  fill.style.width = Math.max(0, Math.min(100, effective)) + "%";
  bar.append(fill);
  for (const step of steps) {
    const tick = el("div", "tick");
    tick.style.left = Math.max(0, Math.min(100, step)) + "%";
    tick.append(el("span", "", percent(step)));
    bar.append(tick);
  }
  card.append(bar);

  const d = policy.decisions || {};
  const counts = el("div", "row");
  counts.append(el("span", "", "allowed " + (d.allow || 0)));
  card.append(counts);
  for (const [label, byReason] of [["would deny (audited)", d.wouldDeny], ["denied", d.deny], ["legacy session", d.legacySession]]) {
    const entries = Object.entries(byReason || {});
    if (!entries.length) continue;
    const list = el("ul", "reasons");
    list.append(el("li", "muted", label + ":"));
    entries.sort((a, b) => b[1] - a[1]);
    for (const [reason, n] of entries) {
      const item = el("li", "");
      item.append(el("code", "", reason), " " + n);
      list.append(item);
    }
    card.append(list);
  }
  if (ready && ready.status !== "True") card.append(el("div", "row muted", ready.message || ""));
  if (status.forwardAuthUrl) {
    const url = el("div", "row muted", "forward-auth ");
    url.append(el("code", "", status.forwardAuthUrl));
    card.append(url);
  }
  return card;
}

function issuerCard(issuer, now) {
  const card = el("div", "card issuer");
  card.dataset.issuer = issuer.namespace + "/" + issuer.name;
  card.append(el("h3", "", issuer.namespace + "/" + issuer.name));
  const row = el("div", "row muted");
  row.append(el("code", "", issuer.issuer));
  card.append(row);

  const t = (iso) => (iso ? Date.parse(iso) : null);
  const retainMs = issuer.rotation.retainForSeconds * 1000;
  const scheduled = t(issuer.nextRotationAt);
  const newest = issuer.keys[issuer.keys.length - 1];
  // The newest key retires when the next one signs, on schedule.
  const retires = (key) => t(key.retiresAt) || (key === newest ? scheduled : null);
  const removed = (key) => t(key.removedAt) || (retires(key) !== null ? retires(key) + retainMs : null);
  if (scheduled !== null) {
    const next = el("div", "line muted", "rotates every " + duration(issuer.rotation.everySeconds) + "; next scheduled key: published ");
    next.append(when(new Date(scheduled - issuer.rotation.prePublishSeconds * 1000).toISOString(), now), ", signs ");
    next.append(when(issuer.nextRotationAt, now));
    card.append(next);
  }

  // One lane per key over a window from the first key's publication to the last
  // transition known or scheduled.
  let start = now, end = now;
  for (const key of issuer.keys) {
    start = Math.min(start, t(key.created));
    end = Math.max(end, removed(key) || t(key.activatesAt));
  }
  end += (end - start) * 0.02 + 1;
  const x = (ms) => ((ms - start) / (end - start)) * 100;
  const segment = (lane, state, from, to) => {
    if (from === null || to <= from) return;
    const seg = el("div", "seg " + state);
    seg.style.left = x(from) + "%";
    seg.style.width = (x(to) - x(from)) + "%";
    seg.title = state;
    lane.append(seg);
  };
  for (const key of issuer.keys) {
    const lane = el("div", "lane");
    lane.title = key.kid;
    segment(lane, "Next", t(key.created), t(key.activatesAt));
    segment(lane, "Active", t(key.activatesAt), retires(key) || end);
    if (retires(key) !== null) segment(lane, "Retired", retires(key), removed(key) || end);
    const mark = el("div", "now");
    mark.style.left = x(now) + "%";
    mark.title = "now";
    lane.append(mark);
    card.append(lane);
  }

  const table = el("table");
  const head = el("tr");
  for (const h of ["kid", "alg", "state", "published", "signs", "retires", "leaves JWKS"]) head.append(el("th", "", h));
  table.append(head);
  for (const key of issuer.keys) {
    const tr = el("tr");
    tr.dataset.kid = key.kid;
    const kid = el("td");
    kid.append(el("code", "", key.kid.slice(0, 16) + "…"));
    kid.title = key.kid;
    const state = el("td");
    state.append(badge(key.state, key.state));
    tr.append(kid, el("td", "", key.alg), state);
    for (const iso of [key.created, key.activatesAt]) {
      const td = el("td");
      td.append(when(iso, now));
      tr.append(td);
    }
    for (const ms of [retires(key), removed(key)]) {
      const td = el("td");
      td.append(ms === null ? el("span", "muted", "—") : when(new Date(ms).toISOString(), now));
      if (!key.retiresAt && ms !== null) td.append(el("span", "muted", " (scheduled)"));
      tr.append(td);
    }
    table.append(tr);
  }
  card.append(table);
  return card;
}

function revocationsTable(revocations, now) {
  if (!revocations.length) return el("p", "empty", "None.");
  const table = el("table");
  const head = el("tr");
  for (const h of ["revocation", "issuer", "applies under", "matches", "reason", "created", "lapses"]) head.append(el("th", "", h));
  table.append(head);
  for (const r of revocations) {
    const tr = el("tr");
    tr.append(
      el("td", "", r.namespace + "/" + r.name),
      el("td", "", r.issuer),
      el("td", "", r.scope ? "namespace " + r.scope : "every namespace"),
      el("td", "", "one " + r.matches),
      el("td", "", r.reason),
    );
    for (const iso of [r.created, r.lapsesAt]) {
      const td = el("td");
      td.append(iso ? when(iso, now) : el("span", "muted", "unknown or never"));
      tr.append(td);
    }
    table.append(tr);
  }
  return table;
}

// Sessions ended in the token store: counts per key and reason, never a session.
function endedSessions(ended) {
  if (!ended || !ended.length) return [];
  const total = ended.reduce((sum, e) => sum + e.count, 0);
  const table = el("table");
  const head = el("tr");
  for (const h of ["issuer", "reason", "sessions"]) head.append(el("th", "", h));
  table.append(head);
  for (const e of ended) {
    const tr = el("tr");
    tr.append(el("td", "", e.issuer), el("td", "", e.reason), el("td", "", String(e.count)));
    table.append(tr);
  }
  return [el("p", "", total + " sessions ended in the token store (logouts, reused refresh tokens), each matching one session:"), table];
}

function fill(section, listed, draw) {
  const target = document.getElementById(section);
  const count = document.getElementById(section + "-count");
  const shown = listed.items.length;
  count.textContent = listed.total > shown ? "(" + shown + " of " + listed.total + ")" : "(" + listed.total + ")";
  const nodes = draw(listed.items);
  if (listed.total > shown) {
    nodes.unshift(el("p", "empty", "The first " + shown + " are shown: add ?namespace=NAME to the address to see one namespace."));
  }
  target.replaceChildren(...nodes);
}

function render(overview) {
  const now = Date.parse(overview.now);
  fill("policies", overview.policies, (items) =>
    items.length ? items.map((p) => policyCard(p, now)) : [el("p", "empty", "No AuthPolicy.")]);
  fill("issuers", overview.issuers, (items) =>
    items.length ? items.map((i) => issuerCard(i, now)) : [el("p", "empty", "No issuer served.")]);
  fill("revocations", overview.revocations, (items) => [revocationsTable(items, now), ...endedSessions(overview.endedSessions)]);
  const updated = document.getElementById("updated");
  updated.className = "";
  updated.textContent = "Updated " + overview.now + ".";
}

async function poll() {
  try {
    const response = await fetch("status" + window.location.search, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    const updated = document.getElementById("updated");
    updated.className = "stale";
    updated.textContent = "Not updated: " + error.message + " (retrying).";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
