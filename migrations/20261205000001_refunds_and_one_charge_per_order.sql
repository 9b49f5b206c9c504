-- Refunds, in parts or whole, and one charge per order.
--
-- A payment keeps what has been given back of it (`refunded_amount`, never more than
-- `amount`) and the points taken back with it (`points_refunded`, never more than
-- `points`). `REFUNDED` is a payment refunded in full by refunds; `CANCELLED` one
-- cancelled, which gives back whatever remained.
ALTER TABLE payments
    ADD COLUMN refunded_amount DECIMAL(19, 4) NOT NULL DEFAULT 0 AFTER refund_balance_after,
    ADD COLUMN points_refunded BIGINT NOT NULL DEFAULT 0 AFTER points,
    -- How the order was charged: `DEBIT` (a payment) or `CAPTURE` (a captured hold,
    -- whose payment row is written by the capture; the hold keeps its own ledger entry).
    ADD COLUMN source VARCHAR(8) NOT NULL DEFAULT 'DEBIT' AFTER status,
    DROP CONSTRAINT payments_status_known,
    ADD CONSTRAINT payments_status_known CHECK (status IN ('COMPLETED', 'REFUNDED', 'CANCELLED')),
    ADD CONSTRAINT payments_source_known CHECK (source IN ('DEBIT', 'CAPTURE')),
    ADD CONSTRAINT payments_refunds_within_amount CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    ADD CONSTRAINT payments_points_refunded_within CHECK (points_refunded >= 0 AND points_refunded <= points);

-- A cancelled payment gave back all of it.
UPDATE payments SET refunded_amount = amount, points_refunded = points WHERE status = 'CANCELLED';

-- One row per refund id: a refund is applied once.
CREATE TABLE refunds (
    refund_id      VARCHAR(64)    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    order_id       VARCHAR(64)    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id        VARCHAR(64)    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    amount         DECIMAL(19, 4) NOT NULL,
    currency       CHAR(3)        NOT NULL,
    reason         VARCHAR(255)   NULL,
    -- Points taken back with it.
    points         BIGINT         NOT NULL DEFAULT 0,
    -- What the order's refunds came to with this one, and the wallet's balance after it.
    refunded_total DECIMAL(19, 4) NOT NULL,
    balance_after  DECIMAL(19, 4) NOT NULL,
    created_at     DATETIME(6)    NOT NULL,
    PRIMARY KEY (refund_id),
    KEY refunds_order_id (order_id),
    CONSTRAINT refunds_amount_positive CHECK (amount > 0)
) ENGINE = InnoDB;

-- A refund credits the wallet under its own entry type, unique per refund id (a cancel
-- keeps `REFUND`, unique per order id).
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_type_known,
    ADD CONSTRAINT ledger_entries_type_known CHECK (entry_type IN
        ('TOP_UP', 'PAYMENT', 'REFUND', 'PARTIAL_REFUND', 'HOLD', 'CAPTURE', 'VOID', 'EXPIRY'));

-- An order id names one charge, a payment or a hold, whichever way it is made: the
-- primary key refuses the second, whatever the locks above the database did.
CREATE TABLE orders (
    order_id   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id    VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    -- `PAYMENT` or `HOLD`.
    kind       VARCHAR(8)  NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (order_id),
    CONSTRAINT orders_kind_known CHECK (kind IN ('PAYMENT', 'HOLD'))
) ENGINE = InnoDB;

-- Existing data: every payment names its order; a hold whose id a payment already has
-- keeps its row but not the order (the ledger audit reports those orders).
INSERT INTO orders (order_id, user_id, kind, created_at)
    SELECT order_id, user_id, 'PAYMENT', created_at FROM payments;
INSERT IGNORE INTO orders (order_id, user_id, kind, created_at)
    SELECT hold_id, user_id, 'HOLD', created_at FROM holds;

-- A captured hold is its order's payment: one for every capture made before, unless a
-- payment already has that id.
INSERT INTO payments (payment_id, order_id, user_id, amount, currency, status, source,
                      balance_after, created_at, points)
    SELECT UUID(), h.hold_id, h.user_id, h.captured_amount, h.currency, 'COMPLETED', 'CAPTURE',
           h.settled_balance_after, h.settled_at, h.points
    FROM holds h
    WHERE h.status = 'CAPTURED'
      AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = h.hold_id);
