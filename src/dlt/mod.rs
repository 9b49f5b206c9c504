//! Dead-letter topics: a record a consumer could not apply is published to
//! `<topic>.DLT` with Spring Kafka's provenance headers ([`publish`]); the dead-letter
//! consumer ([`crate::consumers::dead_letters`]) stores it in `failed_events`, and
//! operators list, retry or ignore it ([`failed_events`], `/api/v1/admin/failed-events`).

pub mod failed_events;
pub mod publish;
