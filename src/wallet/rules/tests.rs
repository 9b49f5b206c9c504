//! The money rules on their own: examples, and property tests over random sequences of
//! requests in random batches, each batch's writes applied to a model of the database
//! as the engine's transaction would apply them.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::domain::{Amount, Currency, Identifier, RawAmount};
use crate::store::holds::HoldStatus;
use crate::store::ledger::EntryType;
use crate::store::payments::PaymentSource;
use crate::wallet::requests::{PlaceHold, Refund, SettleHold, Settlement};

fn ctx(now: DateTime<Utc>) -> Context {
    Context {
        now,
        currency: Currency::KRW,
        points_rate: Decimal::new(1, 2),
    }
}

fn amount(value: i64) -> Amount {
    Amount::parse("amount", RawAmount(Decimal::from(value)), Currency::KRW).unwrap()
}

fn id(text: &str) -> Identifier {
    Identifier::parse("id", text.to_owned()).unwrap()
}

fn wallet(user_id: &str, balance: i64, held: i64) -> WalletRow {
    WalletRow {
        user_id: user_id.to_owned(),
        currency: "KRW".into(),
        balance: Decimal::from(balance),
        held: Decimal::from(held),
        points: 0,
        fence_token: 0,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn book(now: DateTime<Utc>, wallets: Vec<WalletRow>) -> Book {
    Book::new(ctx(now), wallets, Records::default())
}

fn place(hold_id: &str, value: i64) -> PlaceHold {
    PlaceHold {
        hold_id: id(hold_id),
        user_id: id("u"),
        amount: amount(value),
        expires_in: Duration::seconds(60),
    }
}

fn settle(hold_id: &str, how: Settlement) -> SettleHold {
    SettleHold {
        hold_id: id(hold_id),
        user_id: id("u"),
        how,
    }
}

#[test]
fn a_hold_takes_only_the_available_balance() {
    let mut book = book(Utc::now(), vec![wallet("u", 5_000, 2_500)]);
    let before = format!("{book:?}");
    assert!(matches!(
        book.hold(&place("h", 2_501)),
        Err(ServiceError::InsufficientFunds)
    ));
    assert_eq!(format!("{book:?}"), before, "a refusal changes nothing");
}

#[test]
fn a_partial_capture_debits_part_and_releases_the_whole_hold() {
    let now = Utc::now();
    let mut book = book(now, vec![wallet("u", 10_000, 0)]);
    book.hold(&place("h", 3_000)).unwrap();
    let capture = settle("h", Settlement::Capture(Some(amount(2_000))));
    let captured = book.settle(&capture).unwrap();
    assert!(!captured.replayed);
    let funds = book.funds("u").unwrap();
    assert_eq!(
        (funds.balance, funds.held),
        (Decimal::from(8_000), Decimal::ZERO)
    );
    let entry = book.entries().last().unwrap();
    assert_eq!(
        (entry.amount, entry.held_delta),
        (Decimal::from(-2_000), Decimal::from(-3_000))
    );
    let Some(Event::Hold(event)) = book.events().last() else {
        panic!("a hold event");
    };
    assert_eq!(event.event_type, crate::domain::events::HOLD_CAPTURED);
    assert_eq!(event.points, 20);
    // Settled once: a second settlement writes nothing.
    let void = settle("h", Settlement::Void);
    let entries = book.entries().len();
    let again = book.settle(&void).unwrap();
    assert!(again.replayed);
    assert_eq!(book.entries().len(), entries);
    assert!(matches!(
        void.answer(again),
        Err(ServiceError::HoldNotOpen(_))
    ));
    let replayed = book.settle(&capture).unwrap();
    assert!(capture.answer(replayed).is_ok());
    let other = settle("h", Settlement::Capture(Some(amount(1_000))));
    let replayed = book.settle(&other).unwrap();
    assert!(matches!(
        other.answer(replayed),
        Err(ServiceError::KeyReused)
    ));
}

#[test]
fn past_its_deadline_a_hold_expires_whatever_was_asked() {
    let now = Utc::now();
    let mut placing = book(now, vec![wallet("u", 10_000, 0)]);
    placing.hold(&place("h", 3_000)).unwrap();
    let hold = placing.writes().new_holds[0].clone();
    let read = |at| {
        Book::new(
            ctx(at),
            vec![wallet("u", 10_000, 3_000)],
            Records {
                holds: vec![hold.clone()],
                ..Records::default()
            },
        )
    };

    let mut early = read(now);
    assert!(
        matches!(
            early.settle(&settle("h", Settlement::Expire)),
            Err(ServiceError::HoldNotOpen(_))
        ),
        "an expiry before the deadline is refused, so no answer is cached for it"
    );
    let over = settle("h", Settlement::Capture(Some(amount(3_001))));
    assert!(matches!(
        early.settle(&over),
        Err(ServiceError::CaptureExceedsHold)
    ));

    let mut late = read(now + Duration::seconds(60));
    let answer = late
        .settle(&settle("h", Settlement::Capture(None)))
        .unwrap();
    assert_eq!(answer.value.status, HoldStatus::Expired);
    let funds = late.funds("u").unwrap();
    assert_eq!(
        (funds.balance, funds.held),
        (Decimal::from(10_000), Decimal::ZERO)
    );
}

#[test]
fn a_payment_cancelled_in_the_batch_that_made_it_is_written_once_cancelled() {
    let mut book = book(Utc::now(), vec![wallet("u", 1_000, 0)]);
    let debit = Debit {
        order_id: id("o"),
        user_id: id("u"),
        amount: amount(400),
    };
    book.debit(&debit).unwrap();
    let cancel = CancelPayment {
        order_id: id("o"),
        user_id: id("u"),
        reason: None,
    };
    assert!(!book.cancel(&cancel).unwrap().replayed);
    assert!(book.cancel(&cancel).unwrap().replayed);
    let writes = book.writes();
    assert_eq!(writes.new_payments.len(), 1);
    assert_eq!(writes.new_payments[0].status, PaymentStatus::Cancelled);
    assert!(
        writes.changed_payments.is_empty(),
        "inserted as it ends, not updated"
    );
    assert!(writes.deltas.is_empty(), "the wallet is where it was");
}

/// One request of a random sequence, over three wallets and a few keys, so that keys
/// repeat and wallets run dry.
#[derive(Debug, Clone)]
enum Op {
    TopUp {
        key: u8,
        wallet: u8,
        amount: i64,
    },
    Debit {
        key: u8,
        wallet: u8,
        amount: i64,
    },
    Cancel {
        key: u8,
        wallet: u8,
    },
    Hold {
        key: u8,
        wallet: u8,
        amount: i64,
        ttl: i64,
    },
    Capture {
        key: u8,
        wallet: u8,
        amount: Option<i64>,
    },
    Void {
        key: u8,
        wallet: u8,
    },
    Expire {
        key: u8,
        wallet: u8,
    },
    Refund {
        refund: u8,
        key: u8,
        wallet: u8,
        amount: Option<i64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    let wallet = 0u8..3;
    let money = 1i64..5_000;
    prop_oneof![
        (key.clone(), wallet.clone(), money.clone()).prop_map(|(key, wallet, amount)| Op::TopUp {
            key,
            wallet,
            amount
        }),
        (key.clone(), wallet.clone(), money.clone()).prop_map(|(key, wallet, amount)| Op::Debit {
            key,
            wallet,
            amount
        }),
        (key.clone(), wallet.clone()).prop_map(|(key, wallet)| Op::Cancel { key, wallet }),
        (key.clone(), wallet.clone(), money.clone(), 1i64..120).prop_map(
            |(key, wallet, amount, ttl)| Op::Hold {
                key,
                wallet,
                amount,
                ttl
            }
        ),
        (key.clone(), wallet.clone(), proptest::option::of(money)).prop_map(
            |(key, wallet, amount)| Op::Capture {
                key,
                wallet,
                amount
            }
        ),
        (key.clone(), wallet.clone()).prop_map(|(key, wallet)| Op::Void { key, wallet }),
        (key.clone(), wallet.clone()).prop_map(|(key, wallet)| Op::Expire { key, wallet }),
        (0u8..6, key, wallet, proptest::option::of(1i64..3_000)).prop_map(
            |(refund, key, wallet, amount)| Op::Refund {
                refund,
                key,
                wallet,
                amount
            }
        ),
    ]
}

/// What the database holds, as the engine's transactions leave it.
#[derive(Default)]
struct Model {
    wallets: HashMap<String, Funds>,
    payments: HashMap<String, PaymentRow>,
    top_ups: HashMap<String, TopUpRow>,
    holds: HashMap<String, HoldRow>,
    refunds: HashMap<String, RefundRow>,
    orders: std::collections::HashSet<String>,
    ledger: Vec<NewEntry>,
}

impl Model {
    fn new() -> Self {
        let mut model = Self::default();
        for w in 0..3 {
            model.wallets.insert(
                format!("w{w}"),
                Funds {
                    balance: Decimal::ZERO,
                    held: Decimal::ZERO,
                },
            );
        }
        model
    }

    /// A book over everything recorded (a superset of what a batch reads).
    fn book(&self, now: DateTime<Utc>) -> Book {
        let wallets = self
            .wallets
            .iter()
            .map(|(user_id, f)| {
                let mut row = wallet(user_id, 0, 0);
                (row.balance, row.held) = (f.balance, f.held);
                row
            })
            .collect();
        Book::new(
            ctx(now),
            wallets,
            Records {
                payments: self.payments.values().cloned().collect(),
                top_ups: self.top_ups.values().cloned().collect(),
                holds: self.holds.values().cloned().collect(),
                refunds: self.refunds.values().cloned().collect(),
            },
        )
    }

    /// Writes what `book` decided, checking what the transaction's conditions check.
    fn commit(&mut self, book: &Book) {
        let writes = book.writes();
        for (user_id, _, change) in &writes.deltas {
            let funds = self.wallets.get_mut(*user_id).unwrap();
            funds.balance += change.balance;
            funds.held += change.held;
        }
        for p in writes.new_payments {
            assert!(
                self.payments
                    .insert(p.order_id.clone(), p.clone())
                    .is_none(),
                "an order is paid once"
            );
        }
        for (order_id, _, _) in &writes.new_orders {
            assert!(
                self.orders.insert(order_id.to_string()),
                "an order id names one charge"
            );
        }
        for (p, status, refunded) in writes.changed_payments {
            let old = self.payments.insert(p.order_id.clone(), p.clone()).unwrap();
            assert_eq!(
                (old.status, old.refunded_amount),
                (status, refunded),
                "a payment is changed from the state it was read in"
            );
            assert_eq!(
                old.status,
                PaymentStatus::Completed,
                "only an open payment changes"
            );
        }
        for r in writes.new_refunds {
            assert!(
                self.refunds
                    .insert(r.refund_id.clone(), r.clone())
                    .is_none(),
                "a refund is applied once"
            );
        }
        for t in writes.new_top_ups {
            assert!(
                self.top_ups
                    .insert(t.top_up_id.clone(), t.clone())
                    .is_none(),
                "a top-up is applied once"
            );
        }
        for h in writes.new_holds {
            assert!(
                self.holds.insert(h.hold_id.clone(), h.clone()).is_none(),
                "a hold is placed once"
            );
        }
        for h in writes.settled {
            let old = self.holds.insert(h.hold_id.clone(), h.clone()).unwrap();
            assert_eq!(old.status, HoldStatus::Held, "a hold is settled once");
        }
        self.ledger.extend(writes.entries.iter().cloned());
    }

    fn check(&self) {
        for (user_id, funds) in &self.wallets {
            let entries = self.ledger.iter().filter(|e| &e.user_id == user_id);
            let balance: Decimal = entries.clone().map(|e| e.amount).sum();
            let held: Decimal = entries.map(|e| e.held_delta).sum();
            assert_eq!(
                funds.balance, balance,
                "{user_id}: balance = Σ ledger amounts"
            );
            assert_eq!(funds.held, held, "{user_id}: held = Σ ledger held changes");
            assert!(
                Decimal::ZERO <= funds.held && funds.held <= funds.balance,
                "{user_id}: 0 ≤ held ≤ balance"
            );
            let open: Decimal = self
                .holds
                .values()
                .filter(|h| &h.user_id == user_id && h.status == HoldStatus::Held)
                .map(|h| h.amount)
                .sum();
            assert_eq!(funds.held, open, "{user_id}: held = Σ open holds");
        }
        // Never more given back than was paid, nor more points taken back than earned.
        for p in self.payments.values() {
            let refunds: Decimal = self
                .refunds
                .values()
                .filter(|r| r.order_id == p.order_id)
                .map(|r| r.amount)
                .sum();
            let cancel: Decimal = self
                .ledger
                .iter()
                .filter(|e| e.entry_type == EntryType::Refund && e.reference == p.order_id)
                .map(|e| e.amount)
                .sum();
            assert_eq!(
                p.refunded_amount,
                refunds + cancel,
                "{}: refunded",
                p.order_id
            );
            assert!(
                p.refunded_amount <= p.amount,
                "{}: Σ refunds ≤ payment",
                p.order_id
            );
            assert!(p.points_refunded <= p.points, "{}: points", p.order_id);
            assert_eq!(
                p.status == PaymentStatus::Completed,
                p.refunded_amount < p.amount,
                "{}: open while something remains",
                p.order_id
            );
            if p.source == PaymentSource::Capture {
                assert!(self.holds.contains_key(&p.order_id), "a capture's payment");
            } else {
                assert!(
                    !self.holds.contains_key(&p.order_id),
                    "one charge per order"
                );
            }
        }
        // No key applied twice: one entry of each kind per key.
        let mut seen = HashMap::new();
        for e in &self.ledger {
            let kind = match e.entry_type {
                EntryType::Capture | EntryType::Void | EntryType::Expiry => "settled",
                other => other.as_str(),
            };
            *seen.entry((kind, e.reference.clone())).or_insert(0) += 1;
        }
        assert!(
            seen.values().all(|&n| n == 1),
            "one entry per key and kind: {seen:?}"
        );
    }
}

/// Runs `op` in `book`; a refusal must leave the book as it was.
fn run(book: &mut Book, op: &Op) {
    let before = format!("{book:?}");
    let user = |w: &u8| id(&format!("w{w}"));
    let refused = match op {
        Op::TopUp {
            key,
            wallet,
            amount: a,
        } => book
            .top_up(&TopUp {
                top_up_id: id(&format!("t{key}")),
                user_id: user(wallet),
                amount: amount(*a),
            })
            .is_err(),
        Op::Debit {
            key,
            wallet,
            amount: a,
        } => book
            .debit(&Debit {
                order_id: id(&format!("o{key}")),
                user_id: user(wallet),
                amount: amount(*a),
            })
            .is_err(),
        Op::Cancel { key, wallet } => book
            .cancel(&CancelPayment {
                order_id: id(&format!("o{key}")),
                user_id: user(wallet),
                reason: None,
            })
            .is_err(),
        Op::Hold {
            key,
            wallet,
            amount: a,
            ttl,
        } => book
            .hold(&PlaceHold {
                hold_id: id(&format!("o{key}")),
                user_id: user(wallet),
                amount: amount(*a),
                expires_in: Duration::seconds(*ttl),
            })
            .is_err(),
        Op::Capture {
            key,
            wallet,
            amount: a,
        } => book
            .settle(&SettleHold {
                hold_id: id(&format!("o{key}")),
                user_id: user(wallet),
                how: Settlement::Capture(a.map(amount)),
            })
            .is_err(),
        Op::Void { key, wallet } => book
            .settle(&SettleHold {
                hold_id: id(&format!("o{key}")),
                user_id: user(wallet),
                how: Settlement::Void,
            })
            .is_err(),
        Op::Expire { key, wallet } => book
            .settle(&SettleHold {
                hold_id: id(&format!("o{key}")),
                user_id: user(wallet),
                how: Settlement::Expire,
            })
            .is_err(),
        Op::Refund {
            refund,
            key,
            wallet,
            amount: a,
        } => book
            .refund(&Refund {
                refund_id: id(&format!("r{refund}")),
                order_id: id(&format!("o{key}")),
                user_id: user(wallet),
                amount: a.map(amount),
                reason: None,
            })
            .is_err(),
    };
    if refused {
        assert_eq!(
            format!("{book:?}"),
            before,
            "a refused {op:?} changes nothing"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random requests in random batches, with time passing between batches: after
    /// every batch the ledger explains every balance and sum held, holds are covered,
    /// and no key was applied twice.
    #[test]
    fn every_batch_keeps_the_books(batches in proptest::collection::vec(
        (proptest::collection::vec(op(), 1..12), 0i64..90), 1..10,
    )) {
        let mut model = Model::new();
        let mut now = Utc::now();
        for (ops, pause) in &batches {
            let mut book = model.book(now);
            for op in ops {
                run(&mut book, op);
            }
            model.commit(&book);
            model.check();
            now += Duration::seconds(*pause);
        }
    }
}

#[test]
fn refunds_give_back_in_parts_never_more_than_was_paid() {
    let mut book = book(Utc::now(), vec![wallet("u", 10_000, 0)]);
    let debit = Debit {
        order_id: id("o"),
        user_id: id("u"),
        amount: amount(1_000),
    };
    book.debit(&debit).unwrap();
    let refund = |refund_id: &str, value: Option<i64>| Refund {
        refund_id: id(refund_id),
        order_id: id("o"),
        user_id: id("u"),
        amount: value.map(amount),
        reason: None,
    };
    let first = book.refund(&refund("r1", Some(300))).unwrap().value;
    assert_eq!(
        (first.amount.as_str(), first.refunded_total.as_str()),
        ("300", "300")
    );
    assert!(matches!(
        book.refund(&refund("r2", Some(701))),
        Err(ServiceError::RefundExceedsPayment)
    ));
    assert!(book.refund(&refund("r1", Some(300))).unwrap().replayed);
    let rest = book.refund(&refund("r3", None)).unwrap().value;
    assert_eq!(
        (rest.amount.as_str(), rest.balance_after.as_str()),
        ("700", "10000")
    );
    let cancelled = book
        .cancel(&CancelPayment {
            order_id: id("o"),
            user_id: id("u"),
            reason: None,
        })
        .unwrap();
    assert!(cancelled.replayed, "nothing remains to cancel");
    assert_eq!(cancelled.value.status, PaymentStatus::Refunded);
    assert!(matches!(
        book.refund(&refund("r4", None)),
        Err(ServiceError::RefundExceedsPayment)
    ));
    // 10 points earned: 3 back with the first 300, the other 7 with the rest.
    let points: Vec<i64> = book
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Payment(p) if p.event_type == "payment.refunded" => Some(p.points),
            _ => None,
        })
        .collect();
    assert_eq!(points, vec![3, 7]);
}

#[test]
fn an_order_id_names_one_charge() {
    let mut book = book(Utc::now(), vec![wallet("u", 10_000, 0)]);
    book.hold(&place("o", 1_000)).unwrap();
    let debit = Debit {
        order_id: id("o"),
        user_id: id("u"),
        amount: amount(1_000),
    };
    assert!(matches!(book.debit(&debit), Err(ServiceError::KeyReused)));
    book.settle(&settle("o", Settlement::Capture(Some(amount(600)))))
        .unwrap();
    let writes = book.writes();
    assert_eq!(
        writes.new_payments.len(),
        1,
        "the capture is the order's payment"
    );
    assert_eq!(writes.new_payments[0].amount, Decimal::from(600));
    assert_eq!(writes.new_orders.len(), 1, "one order, named by the hold");
    let mut paid = super::tests::book(Utc::now(), vec![wallet("u", 10_000, 0)]);
    paid.debit(&debit).unwrap();
    assert!(matches!(
        paid.hold(&place("o", 1_000)),
        Err(ServiceError::KeyReused)
    ));
}
