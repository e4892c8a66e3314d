// payhook ops console: plain JS, no framework, no build step.
//
// Everything shown comes from the token-protected admin API (and /metrics).
// Event fields come from payment providers and are hostile input, so every
// value reaches the DOM as text (textContent / text nodes), never as markup.
//
// The page's state that a colleague may want to see too (search, time
// range, filters, the open event, the time zone) lives in the address, so
// that the address is a link to this view.
'use strict';

(() => {
  const TOKEN_KEY = 'payhook.adminToken';
  const DEAD_LIMIT = 100;
  const COUNTERS_EVERY_MS = 5000;
  const LISTS_EVERY_MS = 10000;
  const DETAIL_POLL_MS = 1000;
  // A pending delivery is watched for about a minute after it is opened or
  // redelivered; after that its retry schedule is slower than a page needs.
  const DETAIL_POLL_MAX = 60;
  // Banners and results clear themselves; errors stay a little longer.
  const NOTICE_MS = 8000;
  const ERROR_NOTICE_MS = 20000;
  // The address parameters that are filters of the event list (as the API
  // names them), and the others the page keeps there.
  const FILTER_PARAMS = ['q', 'since', 'until', 'account', 'provider', 'type'];

  const state = {
    token: null,
    filters: new URLSearchParams(),
    // The cursor of each page shown so far (null for the newest page), so
    // that "Newer" can step back; the last one is the current page.
    cursors: [null],
    nextCursor: null,
    selected: null,
    detailPolls: 0,
    detailTimer: null,
    intervals: [],
    timers: {},
    zone: 'utc',
    pageSize: 25,
    // From /admin/summary: the queue in use, and the store's counts.
    queue: null,
    pending: undefined,
    dead: undefined,
    seq: { events: 0, detail: 0, dead: 0, endpoints: 0 },
    snapshot: { events: '', dead: '', endpoints: '' },
  };

  const $ = (id) => document.getElementById(id);

  // Builds an element; `attrs` takes `className`, `dataset` and plain
  // attributes, children are nodes or values (always inserted as text).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'className') node.className = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // A list cell: one line, cut with an ellipsis, the whole text on hover.
  function cell(text, attrs) {
    const value = String(text);
    return el('td', { title: value, ...(attrs || {}) }, value);
  }

  function show(id, text) {
    const node = $(id);
    node.textContent = text || '';
    node.hidden = !text;
  }

  // How long a message stays: a test may ask for less.
  function lifetime(isError) {
    const asked = Number(document.body.dataset.noticeMs);
    if (Number.isFinite(asked) && asked > 0) return asked;
    return isError ? ERROR_NOTICE_MS : NOTICE_MS;
  }

  // Shows `text` in the element `id` (and `box`, if the text sits in one),
  // then clears it after a while unless something newer replaced it.
  function flash(id, text, isError, boxId) {
    const box = $(boxId || id);
    show(id, text);
    box.hidden = !text;
    box.classList.toggle('error', Boolean(isError));
    clearTimeout(state.timers[id]);
    if (text) {
      state.timers[id] = setTimeout(() => {
        show(id, '');
        box.hidden = true;
      }, lifetime(isError));
    }
  }

  function notice(text, isError) {
    flash('notice', text, isError, 'notice-box');
  }

  const orDash = (value) => (value === null || value === undefined || value === '' ? '—' : String(value));
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  // ---------------------------------------------------------------------
  // Time: every time on the page in one zone, named in the headers.

  const localZone = () => Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';
  const zoneName = () => (state.zone === 'local' ? localZone() : 'UTC');
  const pad = (n, w) => String(n).padStart(w || 2, '0');

  // "2026-12-07 08:30:05" in the chosen zone; `—` for anything else.
  function time(text) {
    if (typeof text !== 'string') return '—';
    const t = new Date(text);
    if (Number.isNaN(t.getTime())) return text;
    const utc = state.zone !== 'local';
    const parts = utc
      ? [t.getUTCFullYear(), t.getUTCMonth() + 1, t.getUTCDate(), t.getUTCHours(), t.getUTCMinutes(), t.getUTCSeconds()]
      : [t.getFullYear(), t.getMonth() + 1, t.getDate(), t.getHours(), t.getMinutes(), t.getSeconds()];
    const [y, mo, d, h, mi, s] = parts;
    return `${y}-${pad(mo)}-${pad(d)} ${pad(h)}:${pad(mi)}:${pad(s)}`;
  }

  // A `datetime-local` value, read in the chosen zone, as an RFC 3339 instant.
  function inputToInstant(value) {
    if (!value) return '';
    const withSeconds = value.length === 16 ? `${value}:00` : value;
    const t = new Date(state.zone === 'local' ? withSeconds : `${withSeconds}Z`);
    return Number.isNaN(t.getTime()) ? '' : t.toISOString().replace('.000Z', 'Z');
  }

  // An RFC 3339 instant as a `datetime-local` value in the chosen zone.
  function instantToInput(text) {
    if (!text) return '';
    const shown = time(text);
    return shown === text || shown === '—' ? '' : shown.replace(' ', 'T');
  }

  function showZone() {
    $('zone').value = state.zone;
    $('zone-local').textContent = `local time (${localZone()})`;
    for (const node of document.querySelectorAll('.zone-name')) node.textContent = `(${zoneName()})`;
  }

  // Fen to yuan without floating point: 12345 → "123.45".
  function yuan(fen) {
    const n = Number(fen);
    if (!Number.isSafeInteger(n)) return orDash(fen);
    const abs = Math.abs(n);
    return `${n < 0 ? '-' : ''}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
  }

  function money(fen, currency) {
    const text = yuan(fen);
    return currency ? `${text} ${currency}` : text;
  }

  // What a listing says about an event's money: a refund names both amounts
  // (this refund, or the trade's refunds so far where that is all it states).
  function amountOf(ev) {
    const given = (v) => v !== null && v !== undefined;
    if (given(ev.refund_amount)) return `refund ${yuan(ev.refund_amount)} of ${money(ev.amount, ev.currency)}`;
    if (given(ev.refunded_total)) return `refunded ${yuan(ev.refunded_total)} of ${money(ev.amount, ev.currency)}`;
    return ev.amount === undefined || ev.amount === null ? '—' : money(ev.amount, ev.currency);
  }

  // Only known statuses become class names; anything else is "other".
  const statusClass = (status) =>
    ['pending', 'delivered', 'dead'].includes(status) ? `status-${status}` : 'status-other';

  function badge(status, testid) {
    return el('span', { className: `badge ${statusClass(status)}`, dataset: { testid } }, orDash(status));
  }

  // ---------------------------------------------------------------------
  // The address: filters, the open event, the zone and the page size.

  function readAddress() {
    const params = new URLSearchParams(window.location.search);
    state.filters = new URLSearchParams();
    for (const name of FILTER_PARAMS) {
      const value = (params.get(name) || '').trim();
      if (value) state.filters.set(name, value);
    }
    state.zone = params.get('tz') === 'local' ? 'local' : 'utc';
    const asked = Number(params.get('limit'));
    state.pageSize = Number.isInteger(asked) && asked >= 1 && asked <= 500 ? asked : 25;
    const event = params.get('event');
    return event && /^evt_[0-9A-Za-z]{26}$/.test(event) ? event : null;
  }

  function writeAddress(push) {
    const params = new URLSearchParams(state.filters);
    if (state.zone === 'local') params.set('tz', 'local');
    if (state.pageSize !== 25) params.set('limit', String(state.pageSize));
    if (state.selected) params.set('event', state.selected);
    const query = params.toString();
    const url = `${window.location.pathname}${query ? `?${query}` : ''}`;
    if (url !== `${window.location.pathname}${window.location.search}`) {
      if (push) window.history.pushState(null, '', url);
      else window.history.replaceState(null, '', url);
    }
    $('filter-link').href = url;
  }

  // Puts the filters into the form (after the address or the zone changed).
  function fillForm() {
    const f = state.filters;
    $('filter-q').value = f.get('q') || '';
    $('filter-since').value = instantToInput(f.get('since'));
    $('filter-until').value = instantToInput(f.get('until'));
    $('filter-account').value = f.get('account') || '';
    $('filter-provider').value = f.get('provider') || '';
    $('filter-type').value = f.get('type') || '';
  }

  function readForm() {
    const q = new URLSearchParams();
    const text = (id) => $(id).value.trim();
    if (text('filter-q')) q.set('q', text('filter-q'));
    const since = inputToInstant(text('filter-since'));
    if (since) q.set('since', since);
    const until = inputToInstant(text('filter-until'));
    if (until) q.set('until', until);
    for (const id of ['filter-account', 'filter-provider', 'filter-type']) {
      if (text(id)) q.set($(id).name, text(id));
    }
    return q;
  }

  // ---------------------------------------------------------------------
  // The admin API.

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, { method, headers, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      throw new ApiError(0, `the relay did not answer (${e.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      signOut('The admin API answered 401 Unauthorized: the token is missing or wrong.');
      throw new ApiError(401, 'unauthorized');
    }
    if (!response.ok) {
      // Only `error` is relied on: other fields may be added to errors.
      const message = body && typeof body.error === 'string' ? body.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, `${message} (HTTP ${response.status})`);
    }
    return body || {};
  }

  // Shows an API failure in a panel; a 401 has already sent us to the login.
  function failed(panelErrorId, e) {
    if (e.status !== 401) show(panelErrorId, e.message);
  }

  // ---------------------------------------------------------------------
  // Login and logout.

  function showLogin(message) {
    $('console').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    show('login-error', message);
    $('token-input').focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    for (const id of state.intervals) clearInterval(id);
    state.intervals = [];
    clearTimeout(state.detailTimer);
    state.selected = null;
    state.snapshot = { events: '', dead: '' };
    state.queue = null;
    state.pending = undefined;
    state.dead = undefined;
    // Nothing read with the token stays on screen without it.
    for (const id of ['events-body', 'dead-body', 'detail-fields', 'detail-deliveries', 'counters-groups']) {
      $(id).replaceChildren();
    }
    show('dead-count', '');
    show('backend', '');
    $('detail').hidden = true;
    notice('');
    showLogin(message);
  }

  async function login(token) {
    // A header value cannot carry control characters; say so rather than
    // letting fetch fail with a network error.
    if (!/^[\x21-\x7e]+$/.test(token)) {
      show('login-error', 'The token must be printable ASCII without spaces.');
      return;
    }
    state.token = token;
    try {
      await api('GET', '/admin/events?limit=1');
    } catch (e) {
      if (e.status === 401) return;
      // Any other failure (store down, …) is not the token's: open the
      // console, whose panels show their own errors.
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    openConsole();
  }

  function openConsole() {
    $('login').hidden = true;
    $('console').hidden = false;
    $('logout').hidden = false;
    show('login-error', '');
    $('token-input').value = '';
    const event = readAddress();
    showZone();
    fillForm();
    writeAddress(false);
    loadEvents();
    loadDead();
    loadEndpoints();
    refreshSummary().then(refreshCounters);
    if (event) openEvent(event);
    state.intervals.push(
      setInterval(() => {
        if (document.hidden) return;
        refreshSummary().then(refreshCounters);
      }, COUNTERS_EVERY_MS),
    );
    state.intervals.push(
      setInterval(() => {
        if (document.hidden) return;
        loadDead();
        loadEndpoints();
        // Only the newest page follows new events; an older page stays put.
        if (state.cursors.length === 1) loadEvents();
      }, LISTS_EVERY_MS),
    );
  }

  // ---------------------------------------------------------------------
  // Events: one line each, with where its deliveries stand.

  async function loadEvents() {
    const seq = ++state.seq.events;
    const q = new URLSearchParams(state.filters);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) q.set('cursor', cursor);
    q.set('limit', String(state.pageSize));
    try {
      const page = await api('GET', `/admin/events?${q}`);
      if (seq !== state.seq.events) return;
      show('events-error', '');
      state.nextCursor = typeof page.next_cursor === 'string' ? page.next_cursor : null;
      const summaries = page.delivery_status && typeof page.delivery_status === 'object' ? page.delivery_status : {};
      renderEvents(Array.isArray(page.events) ? page.events : [], summaries);
    } catch (e) {
      if (seq === state.seq.events) failed('events-error', e);
    }
    $('events-older').disabled = !state.nextCursor;
    $('events-newer').disabled = state.cursors.length === 1;
  }

  function renderEvents(events, summaries) {
    // Unchanged data keeps its rows, so that a periodic refresh does not
    // pull a row from under the operator's click.
    const snapshot = JSON.stringify([events, summaries, state.zone]);
    if (snapshot === state.snapshot.events) return;
    state.snapshot.events = snapshot;
    const rows = events.map((ev) => {
      const summary = Object.prototype.hasOwnProperty.call(summaries, ev.id) ? summaries[ev.id] : {};
      return el(
        'tr',
        {
          dataset: { testid: 'event-row', eventId: orDash(ev.id), delivery: orDash(summary.status) },
          className: ev.id === state.selected ? 'selected' : null,
        },
        cell(time(ev.received_at), { dataset: { testid: 'event-received' } }),
        el(
          'td',
          { title: orDash(ev.id) },
          el('button', { type: 'button', className: 'link', dataset: { testid: 'event-open' } }, orDash(ev.id)),
        ),
        cell(orDash(ev.type)),
        cell(`${orDash(ev.provider)} / ${orDash(ev.account)}`),
        cell(orDash(ev.merchant_order_no), { dataset: { testid: 'event-order' } }),
        cell(amountOf(ev), { className: 'num', dataset: { testid: 'event-amount' } }),
        el('td', { dataset: { testid: 'event-delivery' } }, badge(summary.status, 'event-delivery-status')),
        cell(orDash(summary.attempts), { className: 'num', dataset: { testid: 'event-attempts' } }),
      );
    });
    $('events-body').replaceChildren(...rows);
    $('events-empty').hidden = rows.length > 0;
  }

  function markSelected() {
    for (const row of $('events-body').querySelectorAll('tr')) {
      row.classList.toggle('selected', row.dataset.eventId === state.selected);
    }
  }

  function search(filters) {
    state.filters = filters;
    state.cursors = [null];
    writeAddress(true);
    loadEvents();
  }

  // ---------------------------------------------------------------------
  // One event: its deliveries and every attempt.

  function openEvent(id) {
    state.selected = id;
    state.detailPolls = 0;
    markSelected();
    writeAddress(false);
    $('detail').hidden = false;
    $('detail-id').textContent = id;
    $('detail').dataset.eventId = id;
    $('detail-fields').replaceChildren();
    $('detail-deliveries').replaceChildren();
    $('detail-json').textContent = '';
    show('detail-error', '');
    $('detail').scrollIntoView({ block: 'nearest' });
    loadDetail();
  }

  function closeEvent() {
    state.selected = null;
    clearTimeout(state.detailTimer);
    $('detail').hidden = true;
    markSelected();
    writeAddress(false);
  }

  async function loadDetail() {
    const id = state.selected;
    if (!id) return;
    const seq = ++state.seq.detail;
    clearTimeout(state.detailTimer);
    try {
      const shown = await api('GET', `/admin/events/${encodeURIComponent(id)}`);
      if (seq !== state.seq.detail || id !== state.selected) return;
      show('detail-error', '');
      const deliveries = Array.isArray(shown.deliveries) ? shown.deliveries : [];
      renderDetail(shown.event || {}, deliveries);
      // Follow a pending delivery until it settles (bounded).
      if (deliveries.some((d) => d.status === 'pending') && state.detailPolls < DETAIL_POLL_MAX) {
        state.detailPolls += 1;
        state.detailTimer = setTimeout(loadDetail, DETAIL_POLL_MS);
      }
    } catch (e) {
      if (seq === state.seq.detail) failed('detail-error', e);
    }
  }

  function renderDetail(ev, deliveries) {
    const zone = ` (${zoneName()})`;
    const fields = [
      ['Type', ev.type],
      ['Provider', ev.provider],
      ['Account', ev.account],
      ['Provider trade no', ev.provider_trade_no],
      ['Merchant order no', ev.merchant_order_no],
      ['Refund no', ev.refund_no],
      ['Amount', ev.amount === undefined ? null : money(ev.amount, ev.currency)],
      ['Refund amount', ev.refund_amount === null || ev.refund_amount === undefined ? null : money(ev.refund_amount, ev.currency)],
      ['Refunded in total', ev.refunded_total === null || ev.refunded_total === undefined ? null : money(ev.refunded_total, ev.currency)],
      ['Channel', ev.channel],
      ['Channel trade no', ev.channel_trade_no],
      ['Occurred', ev.occurred_at && time(ev.occurred_at) + zone],
      ['Received', ev.received_at && time(ev.received_at) + zone],
    ].filter(([, value]) => value !== null && value !== undefined && value !== '');
    $('detail-fields').replaceChildren(
      ...fields.map(([label, value]) => el('div', {}, el('dt', {}, label), el('dd', {}, String(value)))),
    );
    $('detail-deliveries').replaceChildren(
      ...(deliveries.length ? deliveries.map(renderDelivery) : [el('p', { className: 'muted' }, 'No deliveries.')]),
    );
    $('detail-json').textContent = JSON.stringify(ev, null, 2);
  }

  function renderDelivery(d) {
    const attempts = Array.isArray(d.attempts_detail) ? d.attempts_detail : [];
    const zone = ` (${zoneName()})`;
    const facts = [
      ['created', time(d.created_at) + zone],
      ['updated', time(d.updated_at) + zone],
      d.next_attempt_at ? ['next attempt', time(d.next_attempt_at) + zone] : null,
      d.redelivery_of !== null && d.redelivery_of !== undefined ? ['redelivery of', `#${d.redelivery_of}`] : null,
      d.redelivered_as !== null && d.redelivered_as !== undefined ? ['redelivered as', `#${d.redelivered_as}`] : null,
      d.last_error ? ['last error', d.last_error] : null,
    ].filter(Boolean);
    const columns = ['a-n', 'a-time', 'a-outcome', 'a-http', 'a-duration', 'a-error', 'a-response'];
    return el(
      'article',
      {
        className: 'delivery',
        dataset: { testid: 'delivery', deliveryId: orDash(d.id), status: orDash(d.status) },
      },
      el(
        'h4',
        {},
        `#${orDash(d.id)} → ${orDash(d.endpoint)} `,
        badge(d.status, 'delivery-status'),
        el('span', { className: 'muted' }, ` ${plural(Number(d.attempts) || 0, 'attempt', 'attempts')}`),
      ),
      el('p', { className: 'facts' }, facts.map(([k, v]) => el('span', {}, el('b', {}, `${k}: `), v))),
      el(
        'table',
        { className: 'attempts', dataset: { testid: 'attempts' } },
        el('colgroup', {}, columns.map((c) => el('col', { className: c }))),
        el(
          'thead',
          {},
          el('tr', {}, ['#', `Started (${zoneName()})`, 'Outcome', 'HTTP', 'Duration', 'Error', 'Response'].map((h) => el('th', {}, h))),
        ),
        el(
          'tbody',
          {},
          attempts.map((a) =>
            el(
              'tr',
              {
                dataset: {
                  testid: 'attempt',
                  outcome: orDash(a.outcome),
                  httpStatus: orDash(a.http_status),
                },
              },
              el('td', { className: 'num' }, orDash(a.attempt)),
              el('td', {}, time(a.started_at)),
              el('td', {}, orDash(a.outcome)),
              el('td', { className: 'num', dataset: { testid: 'attempt-http' } }, orDash(a.http_status)),
              el('td', { className: 'num' }, a.duration_ms === undefined ? '—' : `${a.duration_ms} ms`),
              el('td', {}, orDash(a.error)),
              el('td', { className: 'mono', dataset: { testid: 'attempt-response' } }, orDash(a.response_excerpt)),
            ),
          ),
        ),
      ),
    );
  }

  async function redeliver(eventId, button) {
    button.disabled = true;
    try {
      const answer = await api('POST', `/admin/events/${encodeURIComponent(eventId)}/redeliver`);
      const n = Array.isArray(answer.deliveries) ? answer.deliveries.length : 0;
      notice(`Redelivery of ${eventId} queued: ${plural(n, 'new delivery', 'new deliveries')}.`);
      // Show the event, so that its new attempts appear as they happen.
      openEvent(eventId);
      loadDead();
      refreshSummary();
    } catch (e) {
      if (e.status !== 401) notice(`Redelivery of ${eventId} failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------
  // Dead deliveries: only the unresolved ones, with the store's count.

  async function loadDead() {
    const seq = ++state.seq.dead;
    try {
      const page = await api('GET', `/admin/deliveries?status=dead&unresolved=true&limit=${DEAD_LIMIT}`);
      if (seq !== state.seq.dead) return;
      const more = typeof page.next_cursor === 'string';
      show('dead-error', more ? `Showing the newest ${DEAD_LIMIT} only.` : '');
      renderDead(Array.isArray(page.deliveries) ? page.deliveries : []);
    } catch (e) {
      if (seq === state.seq.dead) failed('dead-error', e);
    }
  }

  function renderDead(deliveries) {
    const snapshot = JSON.stringify([deliveries, state.zone]);
    if (snapshot === state.snapshot.dead) return;
    state.snapshot.dead = snapshot;
    const rows = deliveries.map((d) =>
      el(
        'tr',
        {
          dataset: {
            testid: 'dead-row',
            deliveryId: orDash(d.id),
            eventId: orDash(d.event_id),
          },
        },
        cell(`#${orDash(d.id)}`, { className: 'num' }),
        el(
          'td',
          { title: orDash(d.event_id) },
          el('button', { type: 'button', className: 'link', dataset: { action: 'open' } }, orDash(d.event_id)),
        ),
        cell(orDash(d.endpoint)),
        cell(orDash(d.attempts), { className: 'num' }),
        cell(orDash(d.last_error)),
        cell(time(d.updated_at)),
        el(
          'td',
          {},
          el(
            'button',
            { type: 'button', dataset: { action: 'redeliver', testid: 'dead-redeliver' }, title: 'Redeliver this event to its current subscribers' },
            'Redeliver',
          ),
        ),
      ),
    );
    $('dead-body').replaceChildren(...rows);
    $('dead-empty').hidden = rows.length > 0;
  }

  // Bulk redelivery asks first, then goes a batch at a time (each batch its
  // own commit, as `payhook redeliver --dead` does), showing its progress: a
  // large dead backlog never becomes due in one transaction.
  const BULK_BATCH = 100;

  function askRedeliverAllDead() {
    $('dead-confirm').hidden = false;
    $('dead-redeliver-all').disabled = true;
  }

  function cancelRedeliverAllDead() {
    $('dead-confirm').hidden = true;
    $('dead-redeliver-all').disabled = false;
  }

  async function redeliverAllDead() {
    const button = $('dead-redeliver-all');
    const progress = $('dead-progress');
    $('dead-confirm').hidden = true;
    button.disabled = true;
    flash('dead-result', '');
    // A test may ask for smaller batches to see several of them.
    const batch = Number(document.body.dataset.bulkBatch) || BULK_BATCH;
    let total = 0;
    let batches = 0;
    progress.dataset.batches = '0';
    try {
      for (;;) {
        const answer = await api('POST', `/admin/deliveries/redeliver?status=dead&limit=${batch}`);
        const done = Number(answer.redelivered) || 0;
        const remaining = Number(answer.remaining) || 0;
        total += done;
        batches += 1;
        progress.dataset.batches = String(batches);
        show('dead-progress', `Redelivered ${total} of ${total + remaining}…`);
        // No progress means the rest cannot be redelivered now (another run
        // took them): stop rather than spin.
        if (remaining === 0 || done === 0) break;
      }
      flash(
        'dead-result',
        total === 0
          ? 'No dead delivery was waiting: each is redelivered once.'
          : `Redelivered ${plural(total, 'dead delivery', 'dead deliveries')}.`,
      );
      loadDead();
      refreshSummary();
      if (state.selected) {
        state.detailPolls = 0;
        loadDetail();
      }
    } catch (e) {
      if (e.status !== 401) {
        flash('dead-result', `Bulk redelivery failed after ${plural(total, 'delivery', 'deliveries')}: ${e.message}`, true);
      }
    } finally {
      show('dead-progress', '');
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------
  // The store's summary (backends, pending and unresolved dead counts), and
  // live counters from /metrics (Prometheus text; open, no token needed).

  async function refreshSummary() {
    try {
      const summary = await api('GET', '/admin/summary');
      const deliveries = summary.deliveries || {};
      state.queue = summary.queue === 'rabbitmq' ? 'rabbitmq' : 'embedded';
      state.pending = deliveries.pending;
      state.dead = deliveries.dead;
      const store = summary.store === 'postgres' ? 'PostgreSQL' : 'SQLite';
      show('backend', `${store} · ${state.queue === 'rabbitmq' ? 'RabbitMQ' : 'embedded queue'}`);
      const dead = Number(deliveries.dead);
      $('dead-count').dataset.count = String(Number.isFinite(dead) ? dead : '');
      show('dead-count', Number.isFinite(dead) ? `(${dead} unresolved)` : '');
    } catch (e) {
      if (e.status !== 401) show('counters-error', `Summary unavailable: ${e.message}`);
    }
  }

  function parseValue(text) {
    if (text === '+Inf') return Infinity;
    if (text === '-Inf') return -Infinity;
    if (text === 'NaN') return NaN;
    const value = Number(text);
    return text === undefined || text === '' || Number.isNaN(value) ? null : value;
  }

  // One sample line: `name{label="value",…} number [timestamp]`.
  function parseSample(line) {
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!name) return null;
    let i = name[0].length;
    const labels = {};
    if (line[i] === '{') {
      i += 1;
      for (;;) {
        while (line[i] === ',' || line[i] === ' ') i += 1;
        if (line[i] === '}') {
          i += 1;
          break;
        }
        const key = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"/.exec(line.slice(i));
        if (!key) return null;
        i += key[0].length;
        let value = '';
        for (;;) {
          if (i >= line.length) return null;
          const c = line[i++];
          if (c === '"') break;
          if (c === '\\') {
            if (i >= line.length) return null;
            const escaped = line[i++];
            value += escaped === 'n' ? '\n' : escaped;
          } else {
            value += c;
          }
        }
        labels[key[1]] = value;
      }
    }
    const value = parseValue(line.slice(i).trim().split(/\s+/)[0]);
    return value === null ? null : { name: name[0], labels, value };
  }

  function parseMetrics(text) {
    const samples = [];
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const sample = parseSample(line);
      if (sample) samples.push(sample);
    }
    return samples;
  }

  // Sums a metric's series by one label, starting from `always` at zero.
  function sumBy(samples, name, label, always) {
    const sums = new Map(always.map((key) => [key, 0]));
    for (const s of samples) {
      if (s.name !== name) continue;
      const key = s.labels[label] || '';
      sums.set(key, (sums.get(key) || 0) + s.value);
    }
    return sums;
  }

  // The sum of a metric's series, or null when it is not exported.
  function total(samples, name) {
    let sum = null;
    for (const s of samples) if (s.name === name) sum = (sum || 0) + s.value;
    return sum;
  }

  const count = (value) => {
    if (value === null || value === undefined) return '—';
    return Number.isInteger(value) ? String(value) : value.toFixed(2);
  };
  const slug = (text) => String(text).toLowerCase().replace(/[^a-z0-9_]/g, '_');

  // Updates counters in place (rows are created once), so that a reader of
  // the page never holds a node that the next refresh threw away.
  function renderCounterGroup(group, title, entries) {
    let box = $(`counter-group-${group}`);
    if (!box) {
      box = el('div', { id: `counter-group-${group}`, className: 'counter-group' }, el('h3', {}, title), el('dl'));
      $('counters-groups').append(box);
    }
    const list = box.querySelector('dl');
    for (const [key, label, value] of entries) {
      const testid = `counter-${group}-${slug(key)}`;
      let cellNode = list.querySelector(`dd[data-testid="${testid}"]`);
      if (!cellNode) {
        cellNode = el('dd', { dataset: { testid } });
        list.append(el('div', { className: 'counter' }, el('dt', {}, label), cellNode));
      }
      cellNode.textContent = count(value);
    }
  }

  async function refreshCounters() {
    let text;
    try {
      const response = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      text = await response.text();
    } catch (e) {
      show('counters-error', `Metrics unavailable: ${e.message}`);
      return;
    }
    if (!state.token) return;
    show('counters-error', '');
    const samples = parseMetrics(text);
    const byOutcome = (name, always) =>
      [...sumBy(samples, name, 'outcome', always)].map(([outcome, value]) => [outcome, outcome || '(none)', value]);
    renderCounterGroup('ingress', 'Callbacks received (since start)', byOutcome('payhook_ingress_requests_total', ['accepted', 'duplicate']));
    renderCounterGroup('attempts', 'Delivery attempts (since start)', byOutcome('payhook_delivery_attempts_total', ['delivered', 'http_error']));
    // Pending and dead are the store's counts, so they agree with the lists
    // below and survive restarts; the outbox and RabbitMQ only exist with a
    // broker, and are not shown without one.
    const deliveries = [
      ['pending', 'pending', state.pending === undefined ? total(samples, 'payhook_deliveries_pending') : state.pending],
      ['dead', 'dead, unresolved', state.dead === undefined ? null : state.dead],
    ];
    if (state.queue === 'rabbitmq') {
      deliveries.push(['outbox', 'outbox backlog', total(samples, 'payhook_outbox_pending')]);
      deliveries.push(['published', 'published to RabbitMQ', total(samples, 'payhook_events_published_total')]);
    }
    renderCounterGroup('deliveries', 'Deliveries', deliveries);
    $('counters-updated').textContent = `updated ${time(new Date().toISOString())} (${zoneName()})`;
  }


  // ---------------------------------------------------------------------
  // Endpoints: paused or not, their backlog and health; pause and resume.

  async function loadEndpoints() {
    const seq = ++state.seq.endpoints;
    try {
      const page = await api('GET', '/admin/endpoints');
      if (seq !== state.seq.endpoints) return;
      show('endpoints-error', '');
      renderEndpoints(Array.isArray(page.endpoints) ? page.endpoints : []);
    } catch (e) {
      if (seq === state.seq.endpoints) failed('endpoints-error', e);
    }
  }

  function endpointState(e) {
    if (!e.paused) return 'active';
    const by = e.paused_by === 'auto' ? 'paused automatically' : 'paused';
    return e.paused_at ? `${by} since ${time(e.paused_at)}` : by;
  }

  function renderEndpoints(endpoints) {
    const snapshot = JSON.stringify([endpoints, state.zone]);
    if (snapshot === state.snapshot.endpoints) return;
    state.snapshot.endpoints = snapshot;
    const paused = endpoints.filter((e) => e.paused).length;
    const count = $('endpoints-count');
    count.textContent = paused ? `(${paused} of ${endpoints.length} paused)` : `(${endpoints.length})`;
    count.dataset.paused = String(paused);
    const rows = endpoints.map((e) =>
      el(
        'tr',
        {
          className: e.paused ? 'paused' : null,
          dataset: { testid: 'endpoint-row', endpointId: orDash(e.id), paused: String(Boolean(e.paused)) },
        },
        cell(orDash(e.id)),
        cell(endpointState(e), { dataset: { testid: 'endpoint-state' } }),
        cell(orDash(e.pending), { className: 'num' }),
        cell(orDash(e.dead), { className: 'num' }),
        cell(time(e.last_success_at)),
        cell(orDash(e.consecutive_failures), { className: 'num' }),
        cell(orDash(e.url)),
        el(
          'td',
          {},
          el(
            'button',
            {
              type: 'button',
              dataset: { action: e.paused ? 'resume' : 'pause', testid: 'endpoint-toggle' },
              title: e.paused
                ? 'Resume: its waiting deliveries go out in the order they became due'
                : 'Pause: its deliveries wait until it is resumed',
            },
            e.paused ? 'Resume' : 'Pause',
          ),
        ),
      ),
    );
    $('endpoints-body').replaceChildren(...rows);
    $('endpoints-empty').hidden = rows.length > 0;
  }

  async function switchEndpoint(id, action, button) {
    button.disabled = true;
    try {
      const answer = await api('POST', `/admin/endpoints/${encodeURIComponent(id)}/${action}`);
      const done = action === 'pause'
        ? (answer.changed ? `Endpoint ${id} paused: its deliveries wait until it is resumed.` : `Endpoint ${id} was already paused.`)
        : (answer.changed ? `Endpoint ${id} resumed: its waiting deliveries go out in order.` : `Endpoint ${id} was not paused.`);
      notice(done);
      state.snapshot.endpoints = '';
      loadEndpoints();
      refreshSummary();
    } catch (e) {
      if (e.status !== 401) notice(`Could not ${action} endpoint ${id}: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------
  // Wiring.

  function start() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      login($('token-input').value.trim());
    });
    $('logout').addEventListener('click', () => signOut(''));
    $('notice-close').addEventListener('click', () => notice(''));
    $('filters').addEventListener('submit', (e) => {
      e.preventDefault();
      search(readForm());
    });
    $('filter-reset').addEventListener('click', () => {
      $('filters').reset();
      search(new URLSearchParams());
    });
    $('zone').addEventListener('change', () => {
      state.zone = $('zone').value === 'local' ? 'local' : 'utc';
      showZone();
      fillForm();
      writeAddress(false);
      state.snapshot = { events: '', dead: '', endpoints: '' };
      loadEvents();
      loadDead();
      loadEndpoints();
      if (state.selected) loadDetail();
    });
    window.addEventListener('popstate', () => {
      if (!state.token) return;
      const event = readAddress();
      showZone();
      fillForm();
      state.cursors = [null];
      loadEvents();
      if (event && event !== state.selected) openEvent(event);
      else if (!event && state.selected) closeEvent();
    });
    $('events-older').addEventListener('click', () => {
      if (!state.nextCursor) return;
      state.cursors.push(state.nextCursor);
      loadEvents();
    });
    $('events-newer').addEventListener('click', () => {
      if (state.cursors.length > 1) state.cursors.pop();
      loadEvents();
    });
    $('events-refresh').addEventListener('click', () => loadEvents());
    $('events-body').addEventListener('click', (e) => {
      const row = e.target.closest('tr[data-event-id]');
      if (row) openEvent(row.dataset.eventId);
    });
    $('detail-redeliver').addEventListener('click', (e) => {
      if (state.selected) redeliver(state.selected, e.currentTarget);
    });
    $('detail-close').addEventListener('click', () => closeEvent());
    $('dead-refresh').addEventListener('click', () => loadDead());
    $('dead-redeliver-all').addEventListener('click', () => askRedeliverAllDead());
    $('dead-confirm-yes').addEventListener('click', () => redeliverAllDead());
    $('dead-confirm-no').addEventListener('click', () => cancelRedeliverAllDead());
    $('dead-body').addEventListener('click', (e) => {
      const row = e.target.closest('tr[data-event-id]');
      const button = e.target.closest('button[data-action]');
      if (!row || !button) return;
      if (button.dataset.action === 'redeliver') redeliver(row.dataset.eventId, button);
      else openEvent(row.dataset.eventId);
    });
    $('endpoints-body').addEventListener('click', (e) => {
      const row = e.target.closest('tr[data-endpoint-id]');
      const button = e.target.closest('button[data-action]');
      if (row && button) switchEndpoint(row.dataset.endpointId, button.dataset.action, button);
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.token) refreshSummary().then(refreshCounters);
    });

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      state.token = saved;
      openConsole();
    } else {
      readAddress();
      showZone();
      showLogin('');
    }
  }

  start();
})();
