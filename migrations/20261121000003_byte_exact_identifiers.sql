-- Identifiers are byte-exact: `ord-abc` and `ORD-ABC` are two orders, `casey` and `CASEY`
-- two users, exactly as Redis keys and the code see them. The tables were created with
-- the server's default collation (`utf8mb4_general_ci` on MariaDB, `utf8mb4_0900_ai_ci`
-- on MySQL 8), which folds case in comparisons and unique keys: a payment for `ORD-ABC`
-- was answered as a replay of `ord-abc` and debited nothing. `utf8mb4_bin` exists on
-- both servers and compares bytes.
--
-- Only identifier columns change: the store reads them through `store::ExactText`,
-- since drivers report a `_bin` column as binary.
ALTER TABLE wallets
    MODIFY user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE payments
    MODIFY order_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY user_id  VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE top_ups
    MODIFY top_up_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY user_id   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE ledger_entries
    MODIFY user_id   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY reference VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE outbox_events
    MODIFY aggregate_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE wallet_points
    MODIFY user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
