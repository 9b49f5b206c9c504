// 150 VUs over many wallets (WALLETS, default 10,000): each turn pays an order, then
// refunds part of it (30 %); one turn in four then refunds the rest (no amount: all
// that remains) and tries one refund more, which must be refused (422
// refund_exceeds_payment). `debits` counts payments; the runner's ledger audit checks
// that every refund has its entry, that no payment gave back more than was paid and
// that no money was created or lost.
import { check } from 'k6';
import { RUN, fund, pay, post, summary, timedOptions } from './lib.js';

const WALLETS = parseInt(__ENV.WALLETS || '10000', 10);
const users = Array.from({ length: WALLETS }, (_, i) => `${RUN}-w${i}`);

export const options = timedOptions('600s', { pay_duration: ['p(95)<3000', 'p(99)<5000'] });

export function setup() {
  fund(users, 1000000000);
}

export default function () {
  const orderId = `${RUN}-o-${__VU}-${__ITER}`;
  const userId = users[Math.floor(Math.random() * WALLETS)];
  const amount = 100 * (1 + (__ITER % 10));
  const paid = pay(orderId, userId, amount);
  if (!check(paid, { 'paid 201': (r) => r.status === 201 })) {
    return;
  }
  const refunds = `/api/v1/payments/${orderId}/refunds`;
  const part = post(refunds, { refundId: `${orderId}-r1`, amount: String((amount * 3) / 10) }, 'refund');
  check(part, { 'refund 201': (r) => r.status === 201 });
  if (__ITER % 4 === 3) {
    const rest = post(refunds, { refundId: `${orderId}-r2` }, 'refund');
    check(rest, { 'rest refunded 201': (r) => r.status === 201 && r.json('refundedTotal') === String(amount) });
    const beyond = post(refunds, { refundId: `${orderId}-r3`, amount: '1' }, 'refund');
    check(beyond, { 'beyond the payment 422': (r) => r.status === 422 && r.json('code') === 'refund_exceeds_payment' });
  }
}

export const handleSummary = summary('refunds');
