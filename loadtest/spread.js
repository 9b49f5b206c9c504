// 150 VUs paying from many wallets (WALLETS, default 10,000), uniformly; with SKEW=1 a
// few wallets (1 %) take 80 % of the payments.
import { check } from 'k6';
import { RUN, fund, pay, summary, timedOptions } from './lib.js';

const WALLETS = parseInt(__ENV.WALLETS || '10000', 10);
const SKEW = __ENV.SKEW === '1';
const HOT = Math.max(1, Math.floor(WALLETS / 100));
const users = Array.from({ length: WALLETS }, (_, i) => `${RUN}-w${i}`);

export const options = timedOptions('600s', { pay_duration: ['p(95)<3000', 'p(99)<5000'] });

export function setup() {
  fund(users, 1000000000);
}

function pick() {
  if (SKEW && Math.random() < 0.8) {
    return users[Math.floor(Math.random() * HOT)];
  }
  return users[Math.floor(Math.random() * WALLETS)];
}

export default function () {
  const res = pay(`${RUN}-s-${__VU}-${__ITER}`, pick(), 1 + (__ITER % 100));
  check(res, { 'payment answered 201': (r) => r.status === 201 });
}

export const handleSummary = summary(SKEW ? 'spread-skewed' : 'spread');
