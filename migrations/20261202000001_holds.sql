-- Holds: funds reserved at checkout, captured (in full or in part) or voided later, or
-- released when they expire.
--
-- `wallets.held` is the sum of the wallet's open holds, kept in the same transaction as
-- every hold change, as `balance` is for the ledger. The wallet's available balance is
-- `balance - held`: a debit or a new hold may take only that, and the CHECK makes the
-- database refuse anything else, whatever the locks above it did.
ALTER TABLE wallets
    ADD COLUMN held DECIMAL(19, 4) NOT NULL DEFAULT 0 AFTER balance,
    ADD CONSTRAINT wallets_held_within_balance CHECK (held >= 0 AND held <= balance);

CREATE TABLE holds (
    hold_id         VARCHAR(64)    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id         VARCHAR(64)    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    amount          DECIMAL(19, 4) NOT NULL,
    currency        CHAR(3)        NOT NULL,
    status          VARCHAR(16)    NOT NULL,
    -- What a capture debited (at most `amount`; the rest was released with it).
    captured_amount DECIMAL(19, 4) NULL,
    -- Points the capture earned, fixed when it was made.
    points          BIGINT         NOT NULL DEFAULT 0,
    expires_at      DATETIME(6)    NOT NULL,
    created_at      DATETIME(6)    NOT NULL,
    -- The wallet as the hold left it, for a replay of the request that placed it.
    balance_after   DECIMAL(19, 4) NOT NULL,
    held_after      DECIMAL(19, 4) NOT NULL,
    -- When it was captured, voided or expired, and the wallet as that left it.
    settled_at           DATETIME(6)    NULL,
    settled_balance_after DECIMAL(19, 4) NULL,
    settled_held_after    DECIMAL(19, 4) NULL,
    PRIMARY KEY (hold_id),
    KEY holds_user_id (user_id, created_at),
    -- The expiry sweeper's scan: open holds by deadline.
    KEY holds_open (status, expires_at),
    CONSTRAINT holds_amount_positive CHECK (amount > 0),
    CONSTRAINT holds_status_known CHECK (status IN ('HELD', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    CONSTRAINT holds_capture_within_amount CHECK (
        (status = 'CAPTURED') = (captured_amount IS NOT NULL)
        AND (captured_amount IS NULL OR (captured_amount > 0 AND captured_amount <= amount)))
) ENGINE = InnoDB;

-- A hold moves no money but reserves it: its entries carry the change of `held`, so the
-- ledger proves both `balance = SUM(amount)` and `held = SUM(held_delta)`.
--   HOLD     amount 0,          held_delta +hold
--   CAPTURE  amount -captured,  held_delta -hold (the rest is released with it)
--   VOID     amount 0,          held_delta -hold
--   EXPIRY   amount 0,          held_delta -hold
-- Each is unique per (entry_type, hold id): a hold is placed once and settled once.
ALTER TABLE ledger_entries
    ADD COLUMN held_delta DECIMAL(19, 4) NOT NULL DEFAULT 0 AFTER balance_after,
    ADD COLUMN held_after DECIMAL(19, 4) NOT NULL DEFAULT 0 AFTER held_delta,
    DROP CONSTRAINT ledger_entries_type_known,
    DROP CONSTRAINT ledger_entries_amount_nonzero,
    ADD CONSTRAINT ledger_entries_type_known CHECK (entry_type IN
        ('TOP_UP', 'PAYMENT', 'REFUND', 'HOLD', 'CAPTURE', 'VOID', 'EXPIRY')),
    ADD CONSTRAINT ledger_entries_moves_something CHECK (amount <> 0 OR held_delta <> 0);
