-- One wallet per user. `balance` is a cache of SUM(ledger_entries.amount) kept in the
-- same transaction as every ledger insert; the CHECK makes an overdraw impossible even
-- if every lock above the database were broken.
CREATE TABLE wallets (
    user_id      VARCHAR(64)     NOT NULL,
    currency     CHAR(3)         NOT NULL,
    balance      DECIMAL(19, 4)  NOT NULL DEFAULT 0,
    -- Highest fencing token of the Redis lock that has written this row. A holder whose
    -- token is lower lost its lease to a newer holder and may not write.
    fence_token  BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at   DATETIME(6)     NOT NULL,
    updated_at   DATETIME(6)     NOT NULL,
    PRIMARY KEY (user_id),
    CONSTRAINT wallets_balance_not_negative CHECK (balance >= 0)
) ENGINE = InnoDB;

-- A payment per order. The unique order_id is the durable idempotency record: it outlives
-- the 24 h Redis cache and any Redis data loss.
CREATE TABLE payments (
    payment_id           CHAR(36)       NOT NULL,
    order_id             VARCHAR(64)    NOT NULL,
    user_id              VARCHAR(64)    NOT NULL,
    amount               DECIMAL(19, 4) NOT NULL,
    currency             CHAR(3)        NOT NULL,
    status               VARCHAR(16)    NOT NULL,
    balance_after        DECIMAL(19, 4) NOT NULL,
    created_at           DATETIME(6)    NOT NULL,
    cancelled_at         DATETIME(6)    NULL,
    cancel_reason        VARCHAR(255)   NULL,
    refund_balance_after DECIMAL(19, 4) NULL,
    PRIMARY KEY (payment_id),
    UNIQUE KEY payments_order_id (order_id),
    KEY payments_user_id (user_id, created_at),
    CONSTRAINT payments_amount_positive CHECK (amount > 0),
    CONSTRAINT payments_status_known CHECK (status IN ('COMPLETED', 'CANCELLED'))
) ENGINE = InnoDB;

CREATE TABLE top_ups (
    top_up_id     VARCHAR(64)    NOT NULL,
    user_id       VARCHAR(64)    NOT NULL,
    amount        DECIMAL(19, 4) NOT NULL,
    currency      CHAR(3)        NOT NULL,
    balance_after DECIMAL(19, 4) NOT NULL,
    created_at    DATETIME(6)    NOT NULL,
    PRIMARY KEY (top_up_id),
    KEY top_ups_user_id (user_id),
    CONSTRAINT top_ups_amount_positive CHECK (amount > 0)
) ENGINE = InnoDB;

-- The ledger: append-only. One entry per money movement, signed amount, unique per
-- (entry_type, reference) so the same top-up, payment or refund can never be booked twice.
CREATE TABLE ledger_entries (
    entry_id      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id       VARCHAR(64)     NOT NULL,
    entry_type    VARCHAR(16)     NOT NULL,
    amount        DECIMAL(19, 4)  NOT NULL,
    balance_after DECIMAL(19, 4)  NOT NULL,
    reference     VARCHAR(64)     NOT NULL,
    created_at    DATETIME(6)     NOT NULL,
    PRIMARY KEY (entry_id),
    UNIQUE KEY ledger_entries_reference (entry_type, reference),
    KEY ledger_entries_user (user_id, entry_id),
    CONSTRAINT ledger_entries_type_known CHECK (entry_type IN ('TOP_UP', 'PAYMENT', 'REFUND')),
    CONSTRAINT ledger_entries_amount_nonzero CHECK (amount <> 0)
) ENGINE = InnoDB;

-- Ledger entries are never updated or deleted; the database refuses it, whoever asks.
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'ledger entries are immutable';

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'ledger entries are immutable';
