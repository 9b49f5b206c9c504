// Shared by the k6 scenarios: base URLs, requests, metrics, the JSON summary.
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';

// BASE_URLS may list several instances (comma-separated); VUs are spread over them.
export const BASE_URLS = (__ENV.BASE_URLS || 'http://127.0.0.1:8080').split(',');
// A checkout-scope API key of the instances under test.
export const HEADERS = {
  'Content-Type': 'application/json',
  Authorization: `Bearer ${__ENV.API_KEY || 'dev-checkout-key'}`,
};
// A funding-scope key: top-ups create money and need a key of their own.
export const FUNDING_HEADERS = {
  'Content-Type': 'application/json',
  Authorization: `Bearer ${__ENV.FUNDING_KEY || 'dev-funding-key'}`,
};
export const RUN = __ENV.RUN_ID || `${Date.now()}`;
export const DURATION = __ENV.DURATION || '30s';
export const VUS = parseInt(__ENV.VUS || '150', 10);
// Load before the measured part (same VUs); its requests are not counted.
export const WARMUP = __ENV.WARMUP || '0s';

// The scenarios of a timed run: an optional warm-up, then `main` for DURATION.
export function timedScenarios(vus) {
  const scenarios = {};
  let start = '0s';
  if (WARMUP !== '0s') {
    scenarios.warmup = { executor: 'constant-vus', vus, duration: WARMUP, gracefulStop: '0s' };
    start = WARMUP;
  }
  scenarios.main = { executor: 'constant-vus', vus, duration: DURATION, startTime: start, gracefulStop: '10s' };
  return scenarios;
}

function measuring() {
  return exec.scenario.name !== 'warmup';
}

export function baseUrl() {
  return BASE_URLS[Math.max(__VU - 1, 0) % BASE_URLS.length];
}

// 402, 409 and 422 are business answers, not failures.
const expected = http.expectedStatuses(200, 201, 402, 409, 422);

const replies = {};
for (const status of ['200', '201', '402', '409', '422', '429', '4xx', '5xx', 'other']) {
  replies[status] = new Counter(`replies_${status}`);
}
export const debits = new Counter('debits');
export const payDuration = new Trend('pay_duration', true);

function count(status) {
  if (!measuring()) {
    return;
  }
  const key = replies[String(status)] ? String(status)
    : status >= 500 ? '5xx' : status >= 400 ? '4xx' : 'other';
  replies[key].add(1);
}

export function post(path, body, name, headers = HEADERS) {
  const res = http.post(`${baseUrl()}${path}`, JSON.stringify(body), {
    headers,
    responseCallback: expected,
    tags: { name },
  });
  count(res.status);
  return res;
}

export function get(path, name) {
  const res = http.get(`${baseUrl()}${path}`, { headers: HEADERS, responseCallback: expected, tags: { name } });
  count(res.status);
  return res;
}

// Records the answer to a debit sent some other way than pay() (e.g. in a batch).
export function tallyPayment(res, orderId) {
  count(res.status);
  if (measuring()) {
    payDuration.add(res.timings.duration);
    if (res.status === 201) {
      debits.add(1);
    }
  }
  // Orders a client saw succeed are logged, so the runner can check each exists.
  if (res.status === 200 || res.status === 201) {
    console.log(`paid ${orderId}`);
  }
}

// A debit.
export function pay(orderId, userId, amount) {
  const res = http.post(`${baseUrl()}/api/v1/payments`, JSON.stringify({ orderId, userId, amount: String(amount) }), {
    headers: HEADERS,
    responseCallback: expected,
    tags: { name: 'pay' },
  });
  tallyPayment(res, orderId);
  return res;
}

// Sends a batch, resending what was rate limited (429) after its Retry-After, as a
// well-behaved client does.
function batchWithRetry(requests) {
  let pending = requests;
  for (let round = 0; pending.length > 0 && round < 30; round++) {
    const replies = http.batch(pending);
    const limited = pending.filter((_, i) => replies[i].status === 429);
    if (limited.length > 0) {
      sleep(1);
    }
    pending = limited;
  }
}

// Creates wallets and tops each up, in parallel batches (used from setup()).
export function fund(userIds, amount) {
  const base = BASE_URLS[0];
  const params = { headers: HEADERS, responseCallback: http.expectedStatuses(200, 201, 429) };
  const funding = { ...params, headers: FUNDING_HEADERS };
  for (let i = 0; i < userIds.length; i += 200) {
    const chunk = userIds.slice(i, i + 200);
    batchWithRetry(chunk.map((userId) => ['POST', `${base}/api/v1/wallets`, JSON.stringify({ userId }), params]));
    batchWithRetry(chunk.map((userId) => ['POST', `${base}/api/v1/wallets/${userId}/top-ups`,
      JSON.stringify({ topUpId: `${userId}-seed`, amount: String(amount) }), funding]));
  }
}

export function wallet(userId) {
  return JSON.parse(http.get(`${BASE_URLS[0]}/api/v1/wallets/${userId}`, { headers: HEADERS }).body);
}

// Writes the JSON summary where the runner reads it, and a short text on stdout.
export function summary(name) {
  return (data) => {
    const file = `${__ENV.RESULTS_DIR || 'loadtest/results'}/${name}.json`;
    const m = data.metrics;
    const val = (metric, key) => (m[metric] && m[metric].values[key] !== undefined ? m[metric].values[key] : 0);
    const seconds = data.state.testRunDurationMs / 1000;
    const lines = [
      `${name}: ${val('debits', 'count')} debits (run took ${seconds.toFixed(1)} s with set-up)`,
      `  pay p50 ${val('pay_duration', 'med').toFixed(1)} ms, p95 ${val('pay_duration', 'p(95)').toFixed(1)} ms, p99 ${val('pay_duration', 'p(99)').toFixed(1)} ms`,
      `  http_req_failed ${(val('http_req_failed', 'rate') * 100).toFixed(2)} %`,
    ];
    return { stdout: `${lines.join('\n')}\n`, [file]: JSON.stringify(data, null, 1) };
  };
}

export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

// The options of a timed scenario: VUS VUs for DURATION (after WARMUP), no 5xx, under
// 1 % failed requests, plus the scenario's own thresholds.
export function timedOptions(setupTimeout, thresholds) {
  return {
    summaryTrendStats: TREND_STATS,
    setupTimeout,
    scenarios: timedScenarios(VUS),
    thresholds: { http_req_failed: ['rate<0.01'], replies_5xx: ['count==0'], ...thresholds },
  };
}
