//! The OpenAPI 3 document, generated from the handlers' annotations (utoipa) and served
//! at `/openapi.json`.

use axum::extract::State;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wallet",
        description = "Pay from a user's stored balance: one orderId debits at most once and always gets the same answer. \
                       Errors are RFC 9457 problem documents with a stable `code`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(Problem)),
    tags(
        (name = "wallets", description = "Wallets, top-ups and the ledger"),
        (name = "payments", description = "Debits, refunds and cancels"),
        (name = "holds", description = "Reserve funds, then capture (in full or in part) or void them; open holds expire at their deadline"),
        (name = "admin", description = "Dead letters (admin scope)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The served document, rendered once at start-up.
#[derive(Clone)]
pub struct Document(pub std::sync::Arc<String>);

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn document(State(doc): State<Document>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
}
