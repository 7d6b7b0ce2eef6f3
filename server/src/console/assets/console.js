// Seaport console: follows the server's event stream (api/events) and
// draws four pages from what it holds. No framework and no build step; all
// text goes in through textContent, never as HTML.
'use strict';

(function () {
  const FEED_MAX = 100;
  const RETRY_MAX_MS = 3000;

  const state = {
    namespace: 'default',
    pattern: '',
    services: new Map(), // id -> service, as of `revision`
    building: null, // a snapshot coming in, swapped in at `synced`
    feed: [], // newest first
    revision: 0,
    server: null,
    hello: null,
    source: null,
    retries: 0,
    retryTimer: null,
    renderTimer: null,
    dirty: new Set(), // what to draw again: 'registry', 'server', 'you'
    checks: 0,
  };

  const $ = (id) => document.getElementById(id);

  // el('td', {class: 'x'}, 'text', child) -> element
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // ---- the event stream ----

  function connect(resume) {
    if (state.source) state.source.close();
    clearTimeout(state.retryTimer);
    const params = new URLSearchParams({ namespace: state.namespace, pattern: state.pattern });
    if (resume && state.building === null && state.revision > 0) {
      params.set('since', String(state.revision));
    } else {
      state.building = new Map();
    }
    const source = new EventSource('api/events?' + params.toString());
    state.source = source;
    source.addEventListener('hello', (e) => {
      state.hello = JSON.parse(e.data);
      state.retries = 0;
      setStatus('live');
      schedule('you');
    });
    source.addEventListener('service', (e) => onService(JSON.parse(e.data)));
    source.addEventListener('recent', (e) => onRecent(JSON.parse(e.data)));
    source.addEventListener('server', (e) => {
      const facts = JSON.parse(e.data);
      if (facts.version) state.server = facts;
      schedule('server');
    });
    source.addEventListener('error', () => {
      if (state.source !== source) return;
      // The browser would retry on its own, but not after an HTTP error;
      // retrying here also resumes from the last revision.
      source.close();
      state.source = null;
      setStatus('disconnected');
      const delay = Math.min(RETRY_MAX_MS, 250 * 2 ** state.retries);
      state.retries += 1;
      state.retryTimer = setTimeout(() => connect(true), delay);
    });
  }

  // Starts over: another namespace or filter.
  function restart() {
    state.feed = [];
    state.revision = 0;
    setStatus('connecting');
    connect(false);
  }

  function onService(event) {
    const service = event.service;
    switch (event.kind) {
      case 'reset':
        state.building = new Map();
        break;
      case 'existing':
        if (state.building === null) state.building = new Map();
        state.building.set(service.id, service);
        break;
      case 'synced':
        if (state.building !== null) {
          state.services = state.building;
          state.building = null;
        }
        state.revision = Math.max(state.revision, event.revision);
        break;
      case 'registered':
      case 'updated':
        (state.building || state.services).set(service.id, service);
        addToFeed([event]);
        break;
      case 'freed':
        (state.building || state.services).delete(service.id);
        addToFeed([event]);
        break;
    }
    if (event.kind !== 'existing' && state.building === null) {
      state.revision = Math.max(state.revision, event.revision);
    }
    if (event.kind !== 'existing') schedule('registry');
  }

  function onRecent(data) {
    addToFeed(data.changes);
    schedule('registry');
  }

  function addToFeed(events) {
    const seen = new Set(state.feed.map((e) => e.revision + ' ' + e.service.id));
    for (const event of events) {
      const key = event.revision + ' ' + event.service.id;
      if (seen.has(key)) continue;
      seen.add(key);
      state.feed.push(event);
    }
    state.feed.sort((a, b) => b.revision - a.revision);
    state.feed.length = Math.min(state.feed.length, FEED_MAX);
  }

  function setStatus(kind) {
    const status = $('status');
    status.dataset.state = kind;
    document.body.classList.toggle('stale', kind === 'disconnected');
    if (kind === 'live') {
      status.textContent = 'Live';
    } else if (kind === 'disconnected') {
      status.textContent = 'Disconnected: reconnecting…';
    } else {
      status.textContent = 'Connecting…';
    }
    status.title = state.revision ? 'showing revision ' + state.revision : '';
  }

  // ---- the filter and namespace ----

  async function applyFilter() {
    const pattern = $('pattern').value.trim();
    const check = ++state.checks;
    const params = new URLSearchParams({ namespace: state.namespace, pattern });
    let answer;
    let ok;
    try {
      const response = await fetch('api/check?' + params.toString());
      ok = response.ok;
      answer = await response.json();
    } catch (e) {
      ok = false;
      answer = { error: 'the server could not be reached to check the filter' };
    }
    if (check !== state.checks) return; // a later keystroke's check decides
    const error = $('pattern-error');
    if (!ok) {
      error.textContent = answer.error;
      error.hidden = false;
      $('pattern').setAttribute('aria-invalid', 'true');
      return;
    }
    error.hidden = true;
    error.textContent = '';
    $('pattern').removeAttribute('aria-invalid');
    if (pattern !== state.pattern) {
      state.pattern = pattern;
      restart();
    }
  }

  let typing = null;
  $('pattern').addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(applyFilter, 250);
  });
  $('filter').addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(typing);
    applyFilter();
  });
  $('namespace').addEventListener('change', () => {
    state.namespace = $('namespace').value;
    restart();
  });

  // ---- pages ----

  function currentPage() {
    const page = location.hash.replace('#', '');
    return ['services', 'hosts', 'changes', 'server'].includes(page) ? page : 'services';
  }

  function showPage() {
    const page = currentPage();
    for (const section of document.querySelectorAll('main > section')) {
      section.hidden = section.dataset.page !== page;
    }
    for (const link of document.querySelectorAll('nav a')) {
      if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = 'Seaport console: ' + page;
  }
  window.addEventListener('hashchange', () => {
    showPage();
    $('main').focus();
  });

  function schedule(part) {
    state.dirty.add(part);
    if (state.renderTimer === null) {
      state.renderTimer = setTimeout(() => {
        state.renderTimer = null;
        render();
      }, 30);
    }
  }

  // Draws what changed; a focused button keeps the focus across the redraw.
  function render() {
    const focused = document.activeElement && document.activeElement.getAttribute('aria-label');
    const dirty = state.dirty;
    state.dirty = new Set();
    if (dirty.has('registry') || dirty.has('you')) {
      renderServices();
      renderHosts();
      renderChanges();
    }
    if (dirty.has('server') || dirty.has('registry')) {
      renderServer();
      renderNamespaces();
    }
    if (dirty.has('you')) renderYou();
    setStatus($('status').dataset.state);
    if (focused) {
      const again = [...document.querySelectorAll('button[aria-label]')].find((b) => b.getAttribute('aria-label') === focused);
      if (again && !again.disabled) again.focus();
    }
  }

  function compareVersions(a, b) {
    if (a === b) return 0;
    if (a === null) return 1;
    if (b === null) return -1;
    const parse = (v) => {
      const [core, pre] = v.split('+')[0].split(/-(.*)/s);
      return { nums: core.split('.').map(Number), pre: pre || null };
    };
    const x = parse(a);
    const y = parse(b);
    for (let i = 0; i < 3; i++) {
      if (x.nums[i] !== y.nums[i]) return y.nums[i] - x.nums[i];
    }
    if (x.pre === null) return -1;
    if (y.pre === null) return 1;
    return x.pre < y.pre ? 1 : -1;
  }

  function byAddress(a, b) {
    return a.host === b.host ? a.port - b.port : a.host < b.host ? -1 : 1;
  }

  function metadataList(metadata) {
    const entries = Object.entries(metadata);
    if (entries.length === 0) return '';
    return el('ul', { class: 'meta' }, ...entries.map(([k, v]) => el('li', {}, el('code', {}, k + '=' + v))));
  }

  function stateCell(service) {
    return service.draining
      ? el('td', { class: 'state state-draining' }, 'draining')
      : el('td', { class: 'state' }, 'up');
  }

  function age(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    const h = Math.floor(m / 60);
    if (h < 48) return h + 'h ' + (m % 60) + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }

  function ageCell(registered) {
    const at = registered.at !== undefined ? registered.at : registered.before;
    const before = registered.at === undefined;
    return el(
      'td',
      { class: 'age' },
      el('time', { datetime: new Date(at).toISOString(), 'data-at': at, 'data-before': before, title: new Date(at).toLocaleString() }, ageText(at, before))
    );
  }

  function ageText(at, before) {
    return (before ? 'over ' : '') + age(Date.now() - at);
  }

  function isAdmin() {
    return Boolean(state.hello && state.hello.admin);
  }

  function actionsCell(service) {
    const what = service.role + ' at ' + service.address + ' (id ' + service.id + ')';
    const drain = el('button', { type: 'button', 'aria-label': 'Drain ' + what, disabled: service.draining }, 'Drain');
    drain.addEventListener('click', () => act('drain', service, 'Drain ' + what + '? Clients stop choosing it for new traffic.'));
    const free = el('button', { type: 'button', class: 'danger', 'aria-label': 'Free ' + what }, 'Free');
    free.addEventListener('click', () => act('free', service, 'Free ' + what + '? An admin\'s free is final: its owner does not register it again.'));
    return el('td', { class: 'actions' }, drain, free);
  }

  async function act(action, service, question) {
    if (!window.confirm(question)) return;
    const notice = $('notice');
    try {
      const response = await fetch('api/' + action + '?' + new URLSearchParams({ id: service.id }), {
        method: 'POST',
        headers: { 'x-seaport-console': '1' },
      });
      const answer = await response.json();
      notice.textContent = response.ok
        ? (action === 'free' ? 'Freed ' : 'Draining ') + service.role + ' at ' + service.address + '.'
        : 'Could not ' + action + ' ' + service.role + ': ' + answer.error;
    } catch (e) {
      notice.textContent = 'Could not ' + action + ' ' + service.role + ': the server could not be reached.';
    }
    notice.hidden = false;
  }

  function servicesIn() {
    return [...state.services.values()];
  }

  function renderServices() {
    const root = $('services');
    const byName = new Map();
    for (const service of servicesIn()) {
      if (!byName.has(service.name)) byName.set(service.name, []);
      byName.get(service.name).push(service);
    }
    const names = [...byName.keys()].sort();
    const admin = isAdmin();
    const blocks = names.map((name) => {
      const list = byName.get(name);
      const versions = new Map();
      for (const service of list) {
        const key = service.version;
        if (!versions.has(key)) versions.set(key, []);
        versions.get(key).push(service);
      }
      const order = [...versions.keys()].sort(compareVersions);
      const head = el(
        'tr',
        {},
        el('th', { scope: 'col' }, 'Version'),
        el('th', { scope: 'col' }, 'Address'),
        el('th', { scope: 'col' }, 'ID'),
        el('th', { scope: 'col' }, 'Age'),
        el('th', { scope: 'col' }, 'Metadata'),
        el('th', { scope: 'col' }, 'State'),
        admin ? el('th', { scope: 'col' }, 'Actions') : null
      );
      const bodies = order.map((version) => {
        const instances = versions.get(version).sort(byAddress);
        const rows = instances.map((service, i) =>
          el(
            'tr',
            { 'data-id': service.id },
            i === 0 ? el('th', { scope: 'rowgroup', rowspan: instances.length, class: 'version' }, version === null ? '(no version)' : version) : null,
            el('td', { class: 'address' }, service.address),
            el('td', { class: 'id' }, service.id),
            ageCell(service.registered),
            el('td', { class: 'metadata' }, metadataList(service.metadata)),
            stateCell(service),
            admin ? actionsCell(service) : null
          )
        );
        return el('tbody', { 'data-version': version === null ? '' : version }, ...rows);
      });
      const count = list.length === 1 ? '1 instance' : list.length + ' instances';
      const versionCount = order.length === 1 ? '1 version' : order.length + ' versions';
      return el(
        'section',
        { class: 'service', 'data-name': name },
        el('h3', {}, name, ' ', el('small', {}, versionCount + ', ' + count)),
        wrap(name, el('table', {}, el('caption', { class: 'visually-hidden' }, name + ': ' + versionCount + ', ' + count), el('thead', {}, head), ...bodies))
      );
    });
    root.replaceChildren(...blocks);
    const total = servicesIn().length;
    $('services-summary').textContent =
      (total === 0 ? 'No registrations' : total + (total === 1 ? ' registration' : ' registrations')) +
      ' in namespace ' + state.namespace + (state.pattern ? ' matching ' + state.pattern : '') + '.';
  }

  function renderHosts() {
    const byHost = new Map();
    for (const service of servicesIn()) {
      if (!byHost.has(service.host)) byHost.set(service.host, []);
      byHost.get(service.host).push(service);
    }
    const hosts = [...byHost.keys()].sort();
    const blocks = hosts.map((host) => {
      const list = byHost.get(host).sort((a, b) => a.port - b.port);
      const rows = list.map((service) =>
        el(
          'tr',
          { 'data-id': service.id },
          el('th', { scope: 'row', class: 'port' }, String(service.port)),
          el('td', {}, service.role),
          el('td', { class: 'id' }, service.id),
          stateCell(service),
          el('td', { class: 'metadata' }, metadataList(service.metadata))
        )
      );
      return wrap(
        host,
        el(
          'table',
          {},
          el('caption', {}, host + ': ' + (list.length === 1 ? '1 port' : list.length + ' ports')),
          el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Port'), el('th', { scope: 'col' }, 'Service'), el('th', { scope: 'col' }, 'ID'), el('th', { scope: 'col' }, 'State'), el('th', { scope: 'col' }, 'Metadata'))),
          el('tbody', {}, ...rows)
        ),
        { 'data-host': host }
      );
    });
    $('hosts').replaceChildren(...blocks);
    $('hosts-summary').textContent =
      'Ports held in namespace ' + state.namespace + (state.pattern ? ' by registrations matching ' + state.pattern : '') + ', by host.';
  }

  function renderChanges() {
    const rows = state.feed.map((event) => {
      const s = event.service;
      const detail = event.kind === 'freed' && event.reason ? 'by ' + event.reason : Object.entries(s.metadata).map(([k, v]) => k + '=' + v).join(', ');
      const at = event.when && event.when.at !== undefined ? event.when.at : event.at;
      return el(
        'tr',
        { 'data-revision': event.revision },
        el('td', { class: 'revision' }, String(event.revision)),
        el('td', {}, at ? el('time', { datetime: new Date(at).toISOString() }, new Date(at).toLocaleTimeString()) : ''),
        el('td', { class: 'event event-' + event.kind }, event.kind),
        el('td', {}, s.role),
        el('td', { class: 'address' }, s.address),
        el('td', { class: 'id' }, s.id),
        el('td', {}, (s.draining ? 'draining ' : '') + detail)
      );
    });
    if (rows.length === 0) {
      rows.push(el('tr', {}, el('td', { colspan: 7, class: 'empty' }, 'No changes yet.')));
    }
    $('changes').tBodies[0].replaceChildren(...rows);
  }

  // A table in a box that scrolls sideways on a narrow screen, and that
  // the keyboard can reach to scroll it.
  function wrap(label, tableNode, attrs) {
    return el('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: 0, ...(attrs || {}) }, tableNode);
  }

  function table(caption, columns, rows, empty) {
    if (rows.length === 0) return el('p', { class: 'empty' }, empty);
    return wrap(
      caption,
      el(
        'table',
        {},
        el('caption', { class: 'visually-hidden' }, caption),
        el('thead', {}, el('tr', {}, ...columns.map((c) => el('th', { scope: 'col' }, c)))),
        el('tbody', {}, ...rows.map((cells) => el('tr', {}, el('th', { scope: 'row' }, cells[0]), ...cells.slice(1).map((c) => el('td', {}, c)))))
      )
    );
  }

  function renderServer() {
    const facts = state.server;
    if (!facts) return;
    const items = [
      ['Version', facts.version],
      ['Address', facts.address],
      ['Store', facts.store],
      ['Store health', facts.store_health],
      ['Health', facts.serving ? 'SERVING' : 'NOT_SERVING'],
      ['Revision', String(Math.max(facts.revision, state.revision))],
      ['Sessions', String(facts.sessions)],
      ['Registrations', String(facts.registrations)],
      ['Watchers (gRPC)', String(facts.watchers)],
      ['Consoles open', String(facts.viewers)],
      ['Started', new Date(facts.started).toLocaleString() + ' (' + age(Date.now() - facts.started) + ' ago)'],
    ];
    $('server-facts').replaceChildren(...items.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-fact': k }, v)]));
    $('peers').replaceChildren(
      table('Other seaportd', ['Address', 'Version', 'ID'], facts.peers.map((p) => [p.address, p.version || '', p.id]), 'None: no other seaportd shares this store.')
    );
    $('namespaces').replaceChildren(
      table('Namespaces', ['Namespace', 'Registrations'], facts.namespaces.map((n) => [n.name, String(n.registrations)]), 'No registrations.')
    );
    $('ports-held').replaceChildren(
      table('Ports held', ['Host', 'Ports held'], facts.ports_held.map((h) => [h.host, String(h.ports)]), 'No ports held.')
    );
  }

  function renderNamespaces() {
    const select = $('namespace');
    const names = new Set(['default', state.namespace]);
    if (state.server) for (const n of state.server.namespaces) names.add(n.name);
    const sorted = [...names].sort();
    const current = [...select.options].map((o) => o.value);
    if (current.join('\n') === sorted.join('\n')) return;
    select.replaceChildren(...sorted.map((n) => el('option', { value: n, selected: n === state.namespace }, n)));
  }

  function renderYou() {
    const hello = state.hello;
    if (!hello) return;
    let text;
    if (!hello.mtls) text = 'Read-only: this server runs without mTLS.';
    else if (!hello.identity) text = 'Read-only: your browser sent no client certificate.';
    else if (hello.admin) text = 'Signed in as ' + hello.identity + ', an admin: you may free and drain.';
    else text = 'Signed in as ' + hello.identity + '; read-only (not an admin).';
    $('you').textContent = text;
  }

  // Ages move on without the network.
  setInterval(() => {
    for (const time of document.querySelectorAll('time[data-at]')) {
      time.textContent = ageText(Number(time.dataset.at), time.dataset.before !== undefined);
    }
  }, 1000);

  showPage();
  connect(false);
})();
