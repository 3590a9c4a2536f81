//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! response types, served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::error::{FieldError, ProblemSchema};
use crate::http::routes::locks::{GrantBody, HolderBody, InspectBody, ReleasedBody};
use crate::transcriptions::Transcription;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "middleway",
        description = "Reads call transcriptions from MySQL and serves distributed locks on Redis, over stateless HTTP.",
        license(name = "Proprietary")
    ),
    paths(
        crate::http::routes::transcriptions::get_transcription,
        crate::http::routes::locks::post_locks,
        crate::http::health::healthz,
        crate::http::health::readyz,
        openapi_json
    ),
    components(schemas(Transcription, ProblemSchema, FieldError, GrantBody, ReleasedBody, InspectBody, HolderBody)),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

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

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    fn document() -> serde_json::Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    #[test]
    fn the_document_is_openapi_3_1_with_both_capabilities() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/transcriptions/{id}"]["get"].is_object());
        assert!(doc["paths"]["/locks"]["post"].is_object());
    }

    #[test]
    fn the_lock_bodies_are_closed_and_carry_their_ranges() {
        let doc = document();
        let acquire = &doc["components"]["schemas"]["AcquireRequest"];
        assert_eq!(acquire["additionalProperties"], false, "{acquire}");
        assert_eq!(acquire["properties"]["wait_ms"]["maximum"], 120000);
        assert_eq!(acquire["properties"]["lease_ms"]["minimum"], 100);
        let release = &doc["components"]["schemas"]["ReleaseRequest"];
        assert_eq!(release["additionalProperties"], false, "{release}");
        assert_eq!(release["properties"]["token"]["maxLength"], 128);
    }
}
