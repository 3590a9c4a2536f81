//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! response types, served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldError, ProblemSchema};
use crate::locks::{GrantBody, LockRequestSchema, ReleasedBody};
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
        crate::transcriptions::route::get_transcription,
        crate::locks::route::post_locks,
        crate::health::healthz,
        crate::health::readyz,
        openapi_json
    ),
    components(schemas(Transcription, ProblemSchema, FieldError, LockRequestSchema, GrantBody, ReleasedBody)),
    modifiers(&BearerAuth)
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

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use crate::locks::{ACQUIRE_FIELDS, EXTEND_FIELDS, RELEASE_FIELDS};
    use utoipa::OpenApi;

    fn schema(name: &str) -> serde_json::Value {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        doc["components"]["schemas"][name].clone()
    }

    #[test]
    fn the_documented_lock_bodies_accept_exactly_the_fields_the_parser_accepts() {
        for (body, fields) in [
            ("AcquireBody", ACQUIRE_FIELDS),
            ("ReleaseBody", RELEASE_FIELDS),
            ("ExtendBody", EXTEND_FIELDS),
        ] {
            let schema = schema(body);
            let mut documented: Vec<&str> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut parsed = fields.to_vec();
            documented.sort();
            parsed.sort();
            assert_eq!(documented, parsed, "{body}");
            assert_eq!(schema["additionalProperties"], false, "{body}");
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_both_capabilities() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/transcriptions/{id}"]["get"].is_object());
        assert!(doc["paths"]["/locks"]["post"].is_object());
        assert_eq!(
            schema("AcquireBody")["properties"]["wait_ms"]["maximum"],
            120000
        );
    }
}
