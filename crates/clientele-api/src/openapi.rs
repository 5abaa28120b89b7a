//! The OpenAPI 3.1 document: the routers contribute their paths (`utoipa_axum`), this adds the
//! frame, the security scheme and the shared schemas.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
    modifiers(&BearerAuth),
    tags(
        (name = "customers", description = "Customers, addressed by hub id or by a backend's own key"),
        (name = "orders", description = "Orders of customers (a customer with orders cannot be deleted)"),
        (name = "schema", description = "Required fields and typed custom fields of customers"),
        (name = "groups", description = "Customer groups, a hierarchy without cycles (`write` to change, `read` to read)"),
        (name = "teams", description = "Teams; an API key restricted to teams sees only their customers, everything else is 404 for it"),
        (name = "api-keys", description = "API keys and their roles (admin only)"),
        (name = "operations", description = "Health, metrics and this document; no authentication"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key secret: `Authorization: Bearer ck_…`"))
                    .build(),
            ),
        );
        // Signed requests authenticate every operation that takes a bearer secret; OpenAPI has
        // no scheme for an HMAC over several headers, so this one documents them.
        components.add_security_scheme(
            "signed",
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
