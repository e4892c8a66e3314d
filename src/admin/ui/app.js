// payhook ops console: plain JS, no framework, no build step.
//
// Everything shown comes from the token-protected admin API (and /metrics).
// Event fields come from payment providers and are hostile input, so every
// value reaches the DOM as text (textContent / text nodes), never as markup.
'use strict';

(() => {
  const TOKEN_KEY = 'payhook.adminToken';
  // Events per page; `/admin/ui?limit=N` (1–500, as the API allows) asks
  // for another size.
  const PAGE_SIZE = (() => {
    const asked = Number(new URLSearchParams(window.location.search).get('limit'));
    return Number.isInteger(asked) && asked >= 1 && asked <= 500 ? asked : 25;
  })();
  const DEAD_LIMIT = 100;
  const COUNTERS_EVERY_MS = 5000;
  const LISTS_EVERY_MS = 10000;
  const DETAIL_POLL_MS = 1000;
  // A pending delivery is watched for about a minute after it is opened or
  // redelivered; after that its retry schedule is slower than a page needs.
  const DETAIL_POLL_MAX = 60;

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
    seq: { events: 0, detail: 0, dead: 0 },
    snapshot: { events: '', dead: '' },
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

  function show(id, text) {
    const node = $(id);
    node.textContent = text || '';
    node.hidden = !text;
  }

  function notice(text, isError) {
    show('notice', text);
    $('notice').classList.toggle('error', Boolean(isError));
  }

  const orDash = (value) => (value === null || value === undefined || value === '' ? '—' : String(value));
  const time = (text) => (typeof text === 'string' ? text.replace('T', ' ') : '—');
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  // Fen to yuan without floating point: 12345 → "123.45".
  function money(fen, currency) {
    const n = Number(fen);
    if (!Number.isSafeInteger(n)) return orDash(fen);
    const abs = Math.abs(n);
    const yuan = `${n < 0 ? '-' : ''}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
    return currency ? `${yuan} ${currency}` : yuan;
  }

  // Only known statuses become class names; anything else is "other".
  const statusClass = (status) =>
    ['pending', 'delivered', 'dead'].includes(status) ? `status-${status}` : 'status-other';

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
    // Nothing read with the token stays on screen without it.
    for (const id of ['events-body', 'dead-body', 'detail-fields', 'detail-deliveries', 'counters-groups']) {
      $(id).replaceChildren();
    }
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
    loadEvents();
    loadDead();
    refreshCounters();
    state.intervals.push(setInterval(() => document.hidden || refreshCounters(), COUNTERS_EVERY_MS));
    state.intervals.push(
      setInterval(() => {
        if (document.hidden) return;
        loadDead();
        // Only the newest page follows new events; an older page stays put.
        if (state.cursors.length === 1) loadEvents();
      }, LISTS_EVERY_MS),
    );
  }

  // ---------------------------------------------------------------------
  // Recent events.

  function readFilters() {
    const q = new URLSearchParams();
    for (const id of ['filter-account', 'filter-provider', 'filter-type', 'filter-order']) {
      const input = $(id);
      const value = input.value.trim();
      if (value) q.set(input.name, value);
    }
    return q;
  }

  async function loadEvents() {
    const seq = ++state.seq.events;
    const q = new URLSearchParams(state.filters);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) q.set('cursor', cursor);
    q.set('limit', String(PAGE_SIZE));
    try {
      const page = await api('GET', `/admin/events?${q}`);
      if (seq !== state.seq.events) return;
      show('events-error', '');
      state.nextCursor = typeof page.next_cursor === 'string' ? page.next_cursor : null;
      renderEvents(Array.isArray(page.events) ? page.events : []);
    } catch (e) {
      if (seq === state.seq.events) failed('events-error', e);
    }
    $('events-older').disabled = !state.nextCursor;
    $('events-newer').disabled = state.cursors.length === 1;
  }

  function renderEvents(events) {
    // Unchanged data keeps its rows, so that a periodic refresh does not
    // pull a row from under the operator's click.
    const snapshot = JSON.stringify(events);
    if (snapshot === state.snapshot.events) return;
    state.snapshot.events = snapshot;
    const rows = events.map((ev) =>
      el(
        'tr',
        { dataset: { testid: 'event-row', eventId: orDash(ev.id) }, className: ev.id === state.selected ? 'selected' : null },
        el('td', { className: 'nowrap' }, time(ev.received_at)),
        el('td', {}, el('button', { type: 'button', className: 'link', dataset: { testid: 'event-open' } }, orDash(ev.id))),
        el('td', { className: 'nowrap' }, orDash(ev.type)),
        el('td', { className: 'wrap' }, `${orDash(ev.provider)} / ${orDash(ev.account)}`),
        el('td', { className: 'wrap', dataset: { testid: 'event-order' } }, orDash(ev.merchant_order_no)),
        el('td', { className: 'num nowrap' }, money(ev.amount, ev.currency)),
      ),
    );
    $('events-body').replaceChildren(...rows);
    $('events-empty').hidden = rows.length > 0;
  }

  function markSelected() {
    for (const row of $('events-body').querySelectorAll('tr')) {
      row.classList.toggle('selected', row.dataset.eventId === state.selected);
    }
  }

  // ---------------------------------------------------------------------
  // One event: its deliveries and every attempt.

  function openEvent(id) {
    state.selected = id;
    state.detailPolls = 0;
    markSelected();
    $('detail').hidden = false;
    $('detail-id').textContent = id;
    $('detail').dataset.eventId = id;
    $('detail-fields').replaceChildren();
    $('detail-deliveries').replaceChildren();
    $('detail-json').textContent = '';
    show('detail-error', '');
    loadDetail();
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
    const fields = [
      ['Type', ev.type],
      ['Provider', ev.provider],
      ['Account', ev.account],
      ['Provider trade no', ev.provider_trade_no],
      ['Merchant order no', ev.merchant_order_no],
      ['Refund no', ev.refund_no],
      ['Amount', ev.amount === undefined ? null : money(ev.amount, ev.currency)],
      ['Refund amount', ev.refund_amount === null || ev.refund_amount === undefined ? null : money(ev.refund_amount, ev.currency)],
      ['Channel', ev.channel],
      ['Channel trade no', ev.channel_trade_no],
      ['Occurred', ev.occurred_at && time(ev.occurred_at)],
      ['Received', ev.received_at && time(ev.received_at)],
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
    const facts = [
      ['created', time(d.created_at)],
      ['updated', time(d.updated_at)],
      d.next_attempt_at ? ['next attempt', time(d.next_attempt_at)] : null,
      d.redelivery_of !== null && d.redelivery_of !== undefined ? ['redelivery of', `#${d.redelivery_of}`] : null,
      d.redelivered_as !== null && d.redelivered_as !== undefined ? ['redelivered as', `#${d.redelivered_as}`] : null,
      d.last_error ? ['last error', d.last_error] : null,
    ].filter(Boolean);
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
        el('span', { className: `badge ${statusClass(d.status)}`, dataset: { testid: 'delivery-status' } }, orDash(d.status)),
        el('span', { className: 'muted' }, ` ${plural(Number(d.attempts) || 0, 'attempt', 'attempts')}`),
      ),
      el('p', { className: 'facts' }, facts.map(([k, v]) => el('span', {}, el('b', {}, `${k}: `), v))),
      el(
        'table',
        { className: 'attempts' },
        el('thead', {}, el('tr', {}, ['#', 'Started', 'Outcome', 'HTTP', 'Duration', 'Error', 'Response'].map((h) => el('th', {}, h)))),
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
              el('td', { className: 'nowrap' }, time(a.started_at)),
              el('td', {}, orDash(a.outcome)),
              el('td', { className: 'num', dataset: { testid: 'attempt-http' } }, orDash(a.http_status)),
              el('td', { className: 'num' }, a.duration_ms === undefined ? '—' : `${a.duration_ms} ms`),
              el('td', { className: 'wrap' }, orDash(a.error)),
              el('td', { className: 'wrap', dataset: { testid: 'attempt-response' } }, orDash(a.response_excerpt)),
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
    } catch (e) {
      if (e.status !== 401) notice(`Redelivery of ${eventId} failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------
  // Dead deliveries.

  async function loadDead() {
    const seq = ++state.seq.dead;
    try {
      const page = await api('GET', `/admin/deliveries?status=dead&limit=${DEAD_LIMIT}`);
      if (seq !== state.seq.dead) return;
      const more = typeof page.next_cursor === 'string';
      show('dead-error', more ? `Showing the newest ${DEAD_LIMIT} dead deliveries only.` : '');
      renderDead(Array.isArray(page.deliveries) ? page.deliveries : []);
    } catch (e) {
      if (seq === state.seq.dead) failed('dead-error', e);
    }
  }

  function renderDead(deliveries) {
    const snapshot = JSON.stringify(deliveries);
    if (snapshot === state.snapshot.dead) return;
    state.snapshot.dead = snapshot;
    const rows = deliveries.map((d) => {
      const redelivered = d.redelivered_as !== null && d.redelivered_as !== undefined;
      return el(
        'tr',
        {
          dataset: {
            testid: 'dead-row',
            deliveryId: orDash(d.id),
            eventId: orDash(d.event_id),
            redelivered: redelivered ? 'yes' : 'no',
          },
        },
        el('td', { className: 'num' }, `#${orDash(d.id)}`),
        el('td', {}, el('button', { type: 'button', className: 'link', dataset: { action: 'open' } }, orDash(d.event_id))),
        el('td', {}, orDash(d.endpoint)),
        el('td', { className: 'num' }, orDash(d.attempts)),
        el('td', { className: 'wrap' }, orDash(d.last_error)),
        el('td', { className: 'nowrap' }, time(d.updated_at)),
        el(
          'td',
          { className: 'nowrap' },
          redelivered ? el('span', { className: 'muted', dataset: { testid: 'dead-redelivered' } }, `redelivered as #${d.redelivered_as} `) : null,
          el(
            'button',
            { type: 'button', dataset: { action: 'redeliver', testid: 'dead-redeliver' }, title: 'Redeliver this event to its current subscribers' },
            'Redeliver',
          ),
        ),
      );
    });
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
      const n = total;
      notice(
        n === 0
          ? 'No dead delivery was waiting: each is redelivered once.'
          : `Redelivered ${plural(n, 'dead delivery', 'dead deliveries')}.`,
      );
      loadDead();
      if (state.selected) {
        state.detailPolls = 0;
        loadDetail();
      }
    } catch (e) {
      if (e.status !== 401) {
        notice(`Bulk redelivery failed after ${plural(total, 'delivery', 'deliveries')}: ${e.message}`, true);
      }
    } finally {
      show('dead-progress', '');
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------
  // Live counters from /metrics (Prometheus text; open, no token needed).

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
      let cell = list.querySelector(`dd[data-testid="${testid}"]`);
      if (!cell) {
        cell = el('dd', { dataset: { testid } });
        list.append(el('div', { className: 'counter' }, el('dt', {}, label), cell));
      }
      cell.textContent = count(value);
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
    renderCounterGroup('ingress', 'Callbacks received', byOutcome('payhook_ingress_requests_total', ['accepted', 'duplicate']));
    renderCounterGroup('attempts', 'Delivery attempts', byOutcome('payhook_delivery_attempts_total', ['delivered', 'http_error']));
    renderCounterGroup('deliveries', 'Deliveries', [
      ['dead', 'dead (since start)', total(samples, 'payhook_deliveries_dead_total') || 0],
      ['pending', 'pending', total(samples, 'payhook_deliveries_pending')],
      ['outbox', 'outbox backlog', total(samples, 'payhook_outbox_pending')],
      ['published', 'published to RabbitMQ', total(samples, 'payhook_events_published_total')],
    ]);
    $('counters-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  // ---------------------------------------------------------------------
  // Wiring.

  function start() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      login($('token-input').value.trim());
    });
    $('logout').addEventListener('click', () => signOut(''));
    $('filters').addEventListener('submit', (e) => {
      e.preventDefault();
      state.filters = readFilters();
      state.cursors = [null];
      loadEvents();
    });
    $('filter-reset').addEventListener('click', () => {
      $('filters').reset();
      state.filters = new URLSearchParams();
      state.cursors = [null];
      loadEvents();
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
    $('detail-close').addEventListener('click', () => {
      state.selected = null;
      clearTimeout(state.detailTimer);
      $('detail').hidden = true;
      markSelected();
    });
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
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.token) refreshCounters();
    });

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      state.token = saved;
      openConsole();
    } else {
      showLogin('');
    }
  }

  start();
})();
