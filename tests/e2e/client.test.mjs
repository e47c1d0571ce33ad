// End-to-end test of Ward's browser client: two people in headless Chromium.
//
// Run: cd tests/e2e && npm ci && npm test
// It tests the server at WARD_E2E_URL (e.g. http://127.0.0.1:8080) or, when
// that is unset, starts WARD_BIN (default target/release/ward from the repo
// root) on a free loopback port. Chromium comes from Debian's `chromium`
// package (/usr/bin/chromium, or CHROMIUM_PATH); no browser is downloaded.
// Screenshots go to tests/e2e/artifacts/.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const ARTIFACTS = path.join(HERE, 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WAIT_MS = 10000;
const XSS = '<img src=x onerror=alert(1)><script>alert(2)</script><b>bold</b>';
const ROOM = `e2e-${Date.now().toString(36)}`;

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
];

// ---- the server ------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// Starts the server; `onSpawn` learns the child at once, so that it is
// stopped even when it never becomes ready.
async function startServer(onSpawn) {
  const bin = path.resolve(REPO, process.env.WARD_BIN || 'target/release/ward');
  assert.ok(existsSync(bin), `no server binary at ${bin}: build it or set WARD_BIN`);
  const port = await freePort();
  const log = createWriteStream(path.join(ARTIFACTS, 'server.log'));
  const child = spawn(bin, [], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      WARD_LISTEN: `127.0.0.1:${port}`,
      WARD_LOG__FORMAT: 'json',
      WARD_DRAIN__DELAY: '0s',
      WARD_DRAIN__SPREAD: '0s',
      WARD_DRAIN__TIMEOUT: '2s',
    },
  });
  onSpawn(child);
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url, child);
  return url;
}

async function waitReady(url, child) {
  const deadline = Date.now() + 30000;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`server exited with ${child.exitCode}; see artifacts/server.log`);
    }
    try {
      const res = await fetch(`${url}/readyz`);
      if (res.status === 200) return;
      last = `status ${res.status}`;
    } catch (err) {
      last = err.cause ? err.cause.code : err.message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url}/readyz was not 200 within 30 s (last: ${last})`);
}

async function stopServer(child) {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  process.kill(child.pid, 'SIGTERM');
  let timer;
  const timeout = new Promise((r) => {
    timer = setTimeout(r, 15000, 'timeout');
  });
  const outcome = await Promise.race([exited, timeout]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    process.kill(child.pid, 'SIGKILL');
    await exited;
    throw new Error('the server did not stop within 15 s of SIGTERM');
  }
}

// ---- the browsers ----------------------------------------------------

async function openBrowser(label, dirs) {
  const dir = await mkdtemp(path.join(os.tmpdir(), `ward-e2e-${label}-`));
  dirs.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('dialog', (d) => {
    problems.push(`dialog opened: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  page.on('console', (msg) => {
    const url = msg.location().url || '';
    if (msg.type() === 'error' && !url.endsWith('/favicon.ico')) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  return { label, context, page, problems };
}

// Polls `check` until it stops throwing, or rethrows its last failure.
async function eventually(check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function signIn(page, url, user, name) {
  await page.goto(url);
  await page.getByTestId('signin-user').fill(user);
  await page.getByTestId('signin-name').fill(name);
  await page.screenshot({ path: path.join(ARTIFACTS, `${user}-signin.png`) });
  await page.getByTestId('signin-submit').click();
  await waitConnected(page);
}

async function waitConnected(page) {
  await page.waitForSelector('[data-testid="connection-state"][data-state="connected"]', {
    timeout: WAIT_MS,
  });
}

async function joinRoom(page, room) {
  await page.getByTestId('join-room').fill(room);
  await page.getByTestId('join-room').press('Enter');
  await eventually(async () => {
    assert.equal(await page.getByTestId('room-title').textContent(), room);
    assert.match(await page.getByTestId('member-count').textContent(), /^\d+ members?$/);
  });
}

// Types and sends a message, then waits until the server confirmed it.
// A send refused with rate_limited is retried (same client_msg_id) through
// the message's Retry button, no sooner than a second after the refusal.
async function say(page, text) {
  const box = page.getByTestId('composer-text');
  await box.fill(text);
  await box.press('Enter');
  let refusedAt = 0;
  await eventually(async () => {
    const failed = page.locator('[data-testid="pending-message"].failed');
    if ((await failed.count()) > 0) {
      const code = await failed.first().getAttribute('data-error-code');
      const why = await failed.first().getByTestId('pending-error').textContent();
      if (code !== 'rate_limited') throw new Error(`send of "${text}" failed: ${code}: ${why}`);
      refusedAt ||= Date.now();
      if (Date.now() - refusedAt >= 1000) {
        refusedAt = 0;
        await failed.first().getByTestId('retry-send').click();
      }
    }
    assert.equal(await page.getByTestId('pending-message').count(), 0, 'still pending');
    const texts = await messageTexts(page);
    assert.ok(texts.includes(text), `own message not shown: ${text}`);
  }, 30000);
}

// The shown messages: [{id, from, text}], in list order.
function shownMessages(page) {
  return page.$$eval('[data-testid="message-list"] [data-testid="message"]', (items) =>
    items.map((li) => ({
      id: li.dataset.messageId,
      from: li.querySelector('[data-testid="message-from"]').textContent,
      text: li.querySelector('[data-testid="message-text"]').textContent,
    })),
  );
}

async function messageTexts(page) {
  return (await shownMessages(page)).map((m) => m.text);
}

async function waitForMessage(page, from, text) {
  await eventually(async () => {
    const found = (await shownMessages(page)).filter((m) => m.text === text);
    assert.equal(found.length, 1, `expected "${text}" exactly once`);
    assert.equal(found[0].from, from);
  });
}

function memberIds(page) {
  return page.$$eval('[data-testid="presence-list"] [data-testid="member"]', (items) =>
    items.map((li) => li.dataset.user),
  );
}

function assertUnique(ids, label) {
  const dupes = ids.filter((id, i) => ids.indexOf(id) !== i);
  assert.deepEqual(dupes, [], `${label}: messages shown twice`);
}

// ---- the scenario ----------------------------------------------------

describe('Ward browser client', () => {
  const dirs = [];
  let server = null;
  let url;
  let alice;
  let bob;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium`);
    if (process.env.WARD_E2E_URL) url = process.env.WARD_E2E_URL.replace(/\/$/, '');
    else {
      url = await startServer((child) => {
        server = child;
      });
    }
    alice = await openBrowser('alice', dirs);
    bob = await openBrowser('bob', dirs);
  });

  after(async () => {
    for (const who of [alice, bob]) {
      if (!who) continue;
      await who.page
        .screenshot({ path: path.join(ARTIFACTS, `${who.label}-final.png`) })
        .catch(() => {});
      await who.context.close().catch(() => {});
    }
    await stopServer(server);
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  test('the page is served with its script and style', async () => {
    for (const p of ['/', '/app.js', '/style.css']) {
      const res = await fetch(url + p);
      assert.equal(res.status, 200, `GET ${p}`);
    }
  });

  test('two people sign in and join the same room', async () => {
    await signIn(alice.page, url, 'alice', 'Alice Grey');
    await signIn(bob.page, url, 'bob', 'Bob Stone');
    await joinRoom(alice.page, ROOM);
    await joinRoom(bob.page, ROOM);
  });

  test('each sees the other in the presence list', async () => {
    await eventually(async () => {
      assert.deepEqual((await memberIds(alice.page)).sort(), ['alice', 'bob']);
      assert.deepEqual((await memberIds(bob.page)).sort(), ['alice', 'bob']);
    });
  });

  test('a message reaches the other person with its sender name', async () => {
    await say(alice.page, 'Bed 4 needs a fluid review');
    await waitForMessage(bob.page, 'Alice Grey', 'Bed 4 needs a fluid review');
    await say(bob.page, 'On my way');
    await waitForMessage(alice.page, 'Bob Stone', 'On my way');
  });

  test('typing is shown to the other person and cleared', async () => {
    await bob.page.getByTestId('composer-text').pressSequentially('Checking the chart');
    await eventually(async () => {
      assert.match(await alice.page.getByTestId('typing').textContent(), /Bob Stone is typing/);
    });
    await bob.page.getByTestId('composer-text').fill('');
    await eventually(async () => {
      assert.equal(await alice.page.getByTestId('typing').textContent(), '');
    });
  });

  test('markup in a message is shown as typed, never run', async () => {
    await say(alice.page, XSS);
    await waitForMessage(bob.page, 'Alice Grey', XSS);
    for (const { page } of [alice, bob]) {
      const elements = await page.$$eval(
        '[data-testid="message-list"]',
        (lists) => lists.map((l) => l.querySelectorAll('img, b, script').length),
      );
      assert.deepEqual(elements, [0], 'markup became elements');
    }
  });

  test('an urgent message is marked and can be acknowledged', async () => {
    await alice.page.locator('label[for="prio-urgent"]').click();
    assert.equal(await alice.page.getByTestId('needs-ack').isChecked(), true);
    await say(alice.page, 'Rapid response to bay 2');
    await waitForMessage(bob.page, 'Alice Grey', 'Rapid response to bay 2');
    const onBob = bob.page
      .getByTestId('message')
      .filter({ hasText: 'Rapid response to bay 2' });
    assert.match(await onBob.getByTestId('urgent-label').textContent(), /Urgent/);
    const onAlice = alice.page
      .getByTestId('message')
      .filter({ hasText: 'Rapid response to bay 2' });
    assert.equal(await onAlice.getByTestId('ack-button').count(), 0, 'sender may not acknowledge');
    await onBob.getByTestId('ack-button').click();
    await eventually(async () => {
      const text = await onAlice.getByTestId('acknowledged-by').textContent();
      assert.match(text, /Acknowledged by Bob Stone/);
      assert.equal(await onBob.getByTestId('ack-button').count(), 0);
    });
  });

  test('read receipts show who has seen the latest message', async () => {
    await eventually(async () => {
      const receipts = await alice.page.getByTestId('read-receipt').allTextContents();
      assert.ok(receipts.some((t) => t.includes('Bob Stone')), `receipts: ${receipts}`);
    });
  });

  test('after a lost connection nothing is missed and nothing is doubled', async () => {
    const before = await shownMessages(bob.page);
    assertUnique(before.map((m) => m.id), 'bob before');
    await bob.page.evaluate(() => {
      window.__wardPauseReconnect = true;
      window.__wardSocket.close();
    });
    await bob.page.waitForSelector(
      '[data-testid="connection-state"][data-state="reconnecting"]',
      { timeout: WAIT_MS },
    );
    await eventually(async () => assert.deepEqual(await memberIds(alice.page), ['alice']));
    await bob.page.screenshot({ path: path.join(ARTIFACTS, 'bob-reconnecting.png') });

    const gap = ['Gap one', 'Gap two', 'Gap three'];
    for (const text of gap) await say(alice.page, text);

    // Unpause and reconnect in one step, before a paused timer can fire.
    const clicked = await bob.page.evaluate(() => {
      window.__wardPauseReconnect = false;
      const retry = document.querySelector('[data-testid="retry-now"]');
      if (retry.hidden) return false;
      retry.click();
      return true;
    });
    assert.ok(clicked, 'the "Retry now" button was not offered while reconnecting');
    await waitConnected(bob.page);
    await eventually(async () => {
      const shown = await shownMessages(bob.page);
      for (const text of gap) {
        assert.equal(shown.filter((m) => m.text === text).length, 1, `"${text}" once`);
      }
    });

    const after = await shownMessages(bob.page);
    const ids = after.map((m) => m.id);
    assertUnique(ids, 'bob after');
    for (const m of before) {
      assert.equal(ids.filter((id) => id === m.id).length, 1, `earlier "${m.text}" once`);
    }
    assert.equal(after.length, before.length + gap.length);
    const aliceIds = (await shownMessages(alice.page)).map((m) => m.id);
    assert.deepEqual(ids, aliceIds, 'both show the same messages in the same order');
    await eventually(async () => {
      assert.deepEqual((await memberIds(alice.page)).sort(), ['alice', 'bob']);
    });
  });

  test('earlier messages load on demand without duplicates', async () => {
    const room = `${ROOM}-history`;
    await joinRoom(alice.page, room);
    const texts = Array.from({ length: 55 }, (_, i) => `Observation ${i + 1}`);
    for (const text of texts) await say(alice.page, text);
    await joinRoom(bob.page, room);
    await eventually(async () => assert.equal((await shownMessages(bob.page)).length, 50));
    await bob.page.getByTestId('load-earlier').click();
    await eventually(async () => {
      const shown = await shownMessages(bob.page);
      assert.deepEqual(shown.map((m) => m.text), texts);
      assertUnique(shown.map((m) => m.id), 'history');
    });
    await eventually(async () => {
      assert.equal(await bob.page.getByTestId('load-earlier').isVisible(), false);
    });
  });

  test('screenshots at desktop and phone size', async () => {
    for (const { page } of [alice, bob]) {
      await page.locator(`[data-testid="room-link"][data-room="${ROOM}"]`).click();
    }
    await alice.page.screenshot({ path: path.join(ARTIFACTS, 'alice-desktop.png') });
    await bob.page.screenshot({ path: path.join(ARTIFACTS, 'bob-desktop.png') });
    await bob.page.setViewportSize({ width: 390, height: 844 });
    await bob.page.screenshot({ path: path.join(ARTIFACTS, 'bob-phone.png') });
    await bob.page.getByRole('button', { name: 'Rooms' }).click();
    await bob.page.screenshot({ path: path.join(ARTIFACTS, 'bob-phone-rooms.png') });
    const width = await bob.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `page is ${width} px wide on a 390 px phone`);
  });

  test('no script errors, dialogs or blocked resources on either page', () => {
    assert.deepEqual([...alice.problems, ...bob.problems], []);
  });
});
