-- Points earned by a payment, fixed when the payment is made, so a cancel takes back
-- exactly what was given even if the rate changes in between.
ALTER TABLE payments ADD COLUMN points BIGINT NOT NULL DEFAULT 0;

-- The transactional outbox: written in the same transaction as the payment it
-- describes, published to Kafka by the relay, marked sent once the broker acknowledged.
CREATE TABLE outbox_events (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id     CHAR(36)        NOT NULL,
    event_type   VARCHAR(64)     NOT NULL,
    -- The Kafka key: the user id, so one user's events stay in order.
    aggregate_id VARCHAR(64)     NOT NULL,
    payload      TEXT            NOT NULL,
    created_at   DATETIME(6)     NOT NULL,
    sent_at      DATETIME(6)     NULL,
    PRIMARY KEY (id),
    UNIQUE KEY outbox_events_event_id (event_id),
    KEY outbox_events_unsent (sent_at, id)
) ENGINE = InnoDB;

-- Points per wallet, kept apart from `wallets` so the consumer never waits on (or
-- delays) a debit's row lock.
CREATE TABLE wallet_points (
    user_id    VARCHAR(64) NOT NULL,
    points     BIGINT      NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB;

-- Events a consumer has applied; the primary key makes a redelivery a no-op, in the
-- same transaction as the effect.
CREATE TABLE processed_events (
    consumer     VARCHAR(64) NOT NULL,
    event_id     VARCHAR(64) NOT NULL,
    processed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (consumer, event_id)
) ENGINE = InnoDB;

-- Records that landed on a dead-letter topic, for operators to retry or ignore.
CREATE TABLE failed_events (
    id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    source_topic     VARCHAR(255)    NOT NULL,
    source_partition INT             NOT NULL,
    source_offset    BIGINT          NOT NULL,
    dlt_topic        VARCHAR(255)    NOT NULL,
    event_key        VARCHAR(255)    NULL,
    payload          MEDIUMTEXT      NOT NULL,
    headers          TEXT            NOT NULL,
    error            TEXT            NOT NULL,
    attempts         INT             NOT NULL,
    status           VARCHAR(16)     NOT NULL,
    first_seen_at    DATETIME(6)     NOT NULL,
    last_seen_at     DATETIME(6)     NOT NULL,
    updated_at       DATETIME(6)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY failed_events_source (source_topic, source_partition, source_offset),
    KEY failed_events_status (status, id),
    CONSTRAINT failed_events_status_known CHECK (status IN ('PENDING', 'RETRIED', 'IGNORED'))
) ENGINE = InnoDB;
