// Top-ups, payments, cancels and reads together.
import { check } from 'k6';
import { FUNDING_HEADERS, RUN, fund, get, pay, post, summary, timedOptions } from './lib.js';

const WALLETS = 500;
const users = Array.from({ length: WALLETS }, (_, i) => `${RUN}-m${i}`);

export const options = timedOptions('300s', { 'http_req_duration{name:read}': ['p(95)<2000'] });

export function setup() {
  fund(users, 100000);
}

let lastOrder = null;

export default function () {
  const userId = users[Math.floor(Math.random() * WALLETS)];
  const roll = Math.random();
  if (roll < 0.1) {
    const res = post(`/api/v1/wallets/${userId}/top-ups`, { topUpId: `${RUN}-t-${__VU}-${__ITER}`, amount: '5000' }, 'top-up', FUNDING_HEADERS);
    check(res, { 'top-up 201': (r) => r.status === 201 });
  } else if (roll < 0.65) {
    const orderId = `${RUN}-mx-${__VU}-${__ITER}`;
    const res = pay(orderId, userId, 100 + (__ITER % 900));
    check(res, { 'payment 201 or 402': (r) => r.status === 201 || r.status === 402 });
    if (res.status === 201) {
      lastOrder = orderId;
    }
  } else if (roll < 0.75 && lastOrder) {
    const res = post(`/api/v1/payments/${lastOrder}/cancel`, { reason: 'load test' }, 'cancel');
    check(res, { 'cancel 200': (r) => r.status === 200 });
    lastOrder = null;
  } else {
    const res = get(`/api/v1/wallets/${userId}/transactions?limit=10`, 'read');
    check(res, { 'read 200': (r) => r.status === 200 });
  }
}

export const handleSummary = summary('mixed');
