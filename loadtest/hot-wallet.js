// 150 VUs paying small amounts from one wallet for a fixed time (DURATION).
import { check } from 'k6';
import { RUN, fund, pay, summary, timedOptions } from './lib.js';

const user = `${RUN}-hot`;

export const options = timedOptions('120s', { pay_duration: ['p(95)<5000', 'p(99)<8000'] });

export function setup() {
  fund([user], 1000000000000);
}

export default function () {
  const res = pay(`${user}-${__VU}-${__ITER}`, user, 1 + (__ITER % 10));
  check(res, { 'payment answered 201': (r) => r.status === 201 });
}

export const handleSummary = summary('hot-wallet');
