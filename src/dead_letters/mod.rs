//! Dead-letter topics: a record a consumer could not apply is published to
//! `<topic>.DLT` with Spring Kafka's provenance headers ([`publish`]); the dead-letter
//! consumer ([`crate::consumers::dead_letters`]) stores it in `failed_events`, and
//! operators list, retry or ignore it ([`store`], `/api/v1/admin/failed-events`). The
//! table and the admin routes keep their names (`failed_events`, `failed-events`):
//! operators' scripts and dashboards use them.

pub mod publish;
pub mod store;
