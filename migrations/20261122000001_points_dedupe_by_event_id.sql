-- Points were deduplicated per (consumer group, event id), so a points consumer started
-- under a new group name read the topic from the beginning and credited every event's
-- points again. An event's points are applied once, whoever applies them: the event id
-- alone is the key. `consumer` stays, as a record of the group that applied the event.
--
-- Every row so far means "the points of this event were applied"; an event applied under
-- two group names (already credited twice) keeps its earliest row.
DELETE later FROM processed_events later
    JOIN processed_events earlier
      ON earlier.event_id = later.event_id
     AND (earlier.processed_at < later.processed_at
          OR (earlier.processed_at = later.processed_at AND earlier.consumer < later.consumer));

ALTER TABLE processed_events DROP PRIMARY KEY, ADD PRIMARY KEY (event_id);
