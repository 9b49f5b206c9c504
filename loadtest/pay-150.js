// The classic proof: one wallet holding exactly 150,000; 150 VUs each pay 1,000 once,
// all at the same instant. Every reply must be 201 and the balance must end at 0.
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { RUN, TREND_STATS, fund, pay, summary, wallet } from './lib.js';

const drained = new Rate('balance_exactly_zero');
const user = `${RUN}-p150`;

export const options = {
  summaryTrendStats: TREND_STATS,
  scenarios: {
    pay: { executor: 'per-vu-iterations', vus: 150, iterations: 1, maxDuration: '60s' },
  },
  thresholds: {
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
    replies_5xx: ['count==0'],
    debits: ['count==150'],
    balance_exactly_zero: ['rate==1'],
    pay_duration: ['p(95)<3000', 'p(99)<5000'],
  },
};

export function setup() {
  fund([user], 150000);
}

export default function () {
  const res = pay(`${user}-${__VU}`, user, 1000);
  check(res, { 'payment answered 201': (r) => r.status === 201 });
}

export function teardown() {
  const balance = wallet(user).balance;
  drained.add(balance === '0');
  check(balance, { 'balance is exactly 0': (b) => b === '0' });
}

export const handleSummary = summary('pay-150');
