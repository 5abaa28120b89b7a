//! The OpenAPI 3.1 document: the routers contribute their paths (`utoipa_axum`), this adds the
//! frame, the security schemes, the shared schemas and the path of the document itself.

use std::sync::Arc;

use axum::Json;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

/// The security scheme of a bearer API key secret.
const BEARER: &str = "bearer";
/// The security scheme of a signed request (see [`BearerAuth`] for why it is one scheme).
const SIGNED: &str = "signed";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Clientele",
        description = "The customer data hub: customers pushed by many backends, keyed by their own ids, \
                       and an exact change feed to pull every change from. Errors are RFC 9457 problems. \
                       An API key restricted to teams sees only customers of its teams: any other customer is \
                       404 `not_found` for it on every endpoint (never 403 or 412); customers it creates without \
                       `teams` get its teams; naming another team is 422 `unknown_team`; a write leaving a customer \
                       outside its teams is 422 `outside_scope`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(
        crate::problem::Problem,
        clientele_domain::FieldError,
        clientele_domain::Address,
        clientele_domain::GroupMembership,
        clientele_domain::write::AddressWrite,
        clientele_domain::write::GroupRef,
        clientele_domain::order::CustomerRef,
        clientele_domain::schema::FieldType,
    )),
    paths(document),
    modifiers(&BearerAuth),
    tags(
        (name = "customers", description = "Customers, addressed by hub id or by a backend's own key"),
        (name = "changes", description = "The change feed: every committed change, in commit order"),
        (name = "orders", description = "Orders of customers (a customer with orders cannot be deleted)"),
        (name = "schema", description = "Required fields and typed custom fields of customers"),
        (name = "groups", description = "Customer groups, a hierarchy without cycles (`write` to change, `read` to read)"),
        (name = "teams", description = "Teams; an API key restricted to teams sees only their customers, everything else is 404 for it"),
        (name = "api-keys", description = "API keys and their roles (admin only)"),
        (name = "operations", description = "Health, metrics and this document; no authentication"),
    )
)]
pub(crate) struct ApiDoc;

// Served by `crate::app` (it needs the finished document, so it is not one of the routers that
// contribute to it); declared here so that the document lists its own path too. Its doc comment
// is the operation's summary.
/// This document: the OpenAPI 3.1 description of every endpoint, generated from the code.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((
        status = 200, description = "The OpenAPI 3.1 document of this API",
        content_type = "application/json", body = Object
    ))
)]
pub(crate) async fn document(
    document: Arc<utoipa::openapi::OpenApi>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}

/// Lets a signed request authenticate `operation` wherever a bearer secret does: the hub's
/// signed-request middleware authenticates every request that carries the signature headers,
/// before any handler, so each operation's `bearer` requirement gets a `signed` alternative
/// (requirements in the list are alternatives: either one suffices).
pub(crate) fn allow_signed(operation: &mut utoipa::openapi::path::Operation) {
    let bearer = SecurityRequirement::new(BEARER, Vec::<String>::new());
    let signed = SecurityRequirement::new(SIGNED, Vec::<String>::new());
    if let Some(requirements) = operation.security.as_mut()
        && requirements.contains(&bearer)
        && !requirements.contains(&signed)
    {
        requirements.push(signed);
    }
}

/// The resources whose every field is always in a response, `null` where unset (API.md).
const ALWAYS_COMPLETE: &[&str] = &["Customer", "Address", "GroupMembership", "Order"];

/// Marks every property of the [`ALWAYS_COMPLETE`] schemas required (optional ones are
/// nullable): run on the finished document, which the routers' schemas are merged into.
pub(crate) fn require_every_field(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, schema::Schema};
    let components = openapi.components.get_or_insert_with(Default::default);
    for name in ALWAYS_COMPLETE {
        // The document is made once, at start and in the tests: a schema renamed or made
        // another kind must not leave it silently incomplete.
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name) else {
            panic!("the OpenAPI document has no object schema {name}");
        };
        object.required = object.properties.keys().cloned().collect();
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key secret: `Authorization: Bearer ck_…`"))
                    .build(),
            ),
        );
        // Signed requests authenticate every operation that takes a bearer secret (see
        // `allow_signed`). OpenAPI 3.1 has no scheme for an HMAC over several headers: `http`
        // schemes are `Authorization` schemes, and an `apiKey` scheme names exactly one header.
        // Four `apiKey` schemes required together (one requirement object naming them all)
        // would list the headers, but clients and generators would then ask for four static
        // credentials, while the timestamp, nonce and signature are computed for each request.
        // So it is one `apiKey` scheme, named by the header that carries the proof, whose
        // description says how to make all four headers.
        components.add_security_scheme(
            SIGNED,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Clientele-Signature",
                "Instead of a bearer secret: X-Clientele-Key (key id), X-Clientele-Timestamp (Unix \
                 seconds, within 300 s), X-Clientele-Nonce (8 to 64 of [A-Za-z0-9_-], once per key) \
                 and X-Clientele-Signature = lower-case hex HMAC-SHA256(secret, METHOD \\n \
                 PATH_AND_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body))). Refusals are 401 \
                 signature_missing, signature_invalid, signature_expired or signature_replayed.",
            ))),
        );
    }
}
