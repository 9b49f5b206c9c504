// 150 VUs over many wallets (WALLETS, default 10,000): each turn places a hold, then
// captures 90 % of it (four turns in five, the rest released) or voids it (one in five).
// `debits` counts settled holds; the runner's ledger audit checks balance = Σ entries,
// held = Σ open holds and that no money was created or lost.
import { check } from 'k6';
import { RUN, debits, fund, post, payDuration, summary, timedOptions } from './lib.js';
import exec from 'k6/execution';

const WALLETS = parseInt(__ENV.WALLETS || '10000', 10);
const users = Array.from({ length: WALLETS }, (_, i) => `${RUN}-w${i}`);

export const options = timedOptions('600s', { pay_duration: ['p(95)<3000', 'p(99)<5000'] });

export function setup() {
  fund(users, 1000000000);
}

function measured(res) {
  if (exec.scenario.name !== 'warmup') {
    payDuration.add(res.timings.duration);
  }
}

export default function () {
  const holdId = `${RUN}-h-${__VU}-${__ITER}`;
  const userId = users[Math.floor(Math.random() * WALLETS)];
  const amount = 10 * (1 + (__ITER % 10));
  const held = post('/api/v1/holds', { holdId, userId, amount: String(amount) }, 'hold');
  measured(held);
  if (!check(held, { 'hold answered 201': (r) => r.status === 201 })) {
    return;
  }
  const settled = __ITER % 5 === 4
    ? post(`/api/v1/holds/${holdId}/void`, {}, 'void')
    : post(`/api/v1/holds/${holdId}/capture`, { amount: String((amount * 9) / 10) }, 'capture');
  measured(settled);
  if (check(settled, { 'settled 200': (r) => r.status === 200 }) && exec.scenario.name !== 'warmup') {
    debits.add(1);
  }
}

export const handleSummary = summary('holds');
