// 150 VUs: a quarter of the payments from one hot wallet, the rest uniformly from many
// wallets (WALLETS, default 10,000): the mixed workload of the benchmark matrix.
import { check } from 'k6';
import { RUN, fund, pay, summary, timedOptions } from './lib.js';

const WALLETS = parseInt(__ENV.WALLETS || '10000', 10);
const hot = `${RUN}-hot`;
const users = Array.from({ length: WALLETS }, (_, i) => `${RUN}-w${i}`);

export const options = timedOptions('600s', { pay_duration: ['p(95)<3000', 'p(99)<5000'] });

export function setup() {
  fund(users, 1000000000);
  fund([hot], 1000000000000);
}

export default function () {
  const user = Math.random() < 0.25 ? hot : users[Math.floor(Math.random() * WALLETS)];
  const res = pay(`${RUN}-hs-${__VU}-${__ITER}`, user, 1 + (__ITER % 100));
  check(res, { 'payment answered 201': (r) => r.status === 201 });
}

export const handleSummary = summary('hot-spread');
