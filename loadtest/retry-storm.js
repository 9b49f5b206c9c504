// Clients that resend each orderId: three copies at once, one a moment later, and one
// with another amount (which must be refused with 422). Only the first may debit.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { HEADERS, RUN, baseUrl, fund, pay, post, summary, tallyPayment, timedOptions } from './lib.js';

const WALLETS = 50;
const users = Array.from({ length: WALLETS }, (_, i) => `${RUN}-r${i}`);

export const options = timedOptions('120s', { checks: ['rate==1'] });

export function setup() {
  fund(users, 1000000000);
}

export default function () {
  const orderId = `${RUN}-storm-${__VU}-${__ITER}`;
  const userId = users[__ITER % WALLETS];
  const body = JSON.stringify({ orderId, userId, amount: '100' });
  const params = {
    headers: HEADERS,
    responseCallback: http.expectedStatuses(200, 201, 409),
    tags: { name: 'pay' },
  };
  const copies = http.batch([0, 1, 2].map(() => ['POST', `${baseUrl()}/api/v1/payments`, body, params]));
  copies.forEach((r) => tallyPayment(r, orderId));
  const created = copies.filter((r) => r.status === 201).length;
  const bodies = new Set(copies.filter((r) => r.status === 200 || r.status === 201).map((r) => r.body));
  check(copies, {
    'at most one copy debits': () => created <= 1,
    'replays are identical': () => bodies.size <= 1,
    'copies answer 200, 201 or 409': (rs) => rs.every((r) => [200, 201, 409].includes(r.status)),
  });
  sleep(0.05);
  const later = pay(orderId, userId, 100);
  check(later, { 'a later copy replays 200': (r) => r.status === 200 && (bodies.size === 0 || bodies.has(r.body)) });
  const other = post('/api/v1/payments', { orderId, userId, amount: '101' }, 'reuse');
  check(other, { 'another amount answers 422': (r) => r.status === 422 });
}

export const handleSummary = summary('retry-storm');
