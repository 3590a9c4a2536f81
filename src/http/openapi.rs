//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! response types, served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::error::{FieldError, ProblemSchema};
use crate::http::routes::locks::{GrantBody, HolderBody, InspectBody, ReleasedBody};
use crate::http::routes::transcriptions::TranscriptionBatch;
use crate::locks::LockRequest;
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
        crate::http::routes::transcriptions::get_transcriptions,
        crate::http::routes::locks::post_locks,
        crate::http::health::healthz,
        crate::http::health::readyz,
        openapi_json
    ),
    components(schemas(Transcription, TranscriptionBatch, ProblemSchema, FieldError, LockRequest, GrantBody, ReleasedBody, InspectBody, HolderBody)),
    modifiers(&BearerAuth, &ClosedLockBodies, &BatchIds)
)]
pub(crate) struct ApiDoc;

/// serde's `deny_unknown_fields` does not reach utoipa's enum variants: close
/// each `POST /locks` body here, so the document refuses what the parser refuses.
struct ClosedLockBodies;

impl Modify for ClosedLockBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::OneOf(bodies))) = components.schemas.get_mut("LockRequest") {
            for body in &mut bodies.items {
                if let RefOr::T(Schema::Object(object)) = body {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

/// `ids` of a batch read: the parser's bounds (1 to 100 distinct ids of at
/// least 1), which utoipa's parameter attributes cannot state.
struct BatchIds;

impl Modify for BatchIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{ArrayItems, Schema};
        let Some(get) = openapi
            .paths
            .paths
            .get_mut("/transcriptions")
            .and_then(|item| item.get.as_mut())
        else {
            return;
        };
        let ids = get.parameters.iter_mut().flatten().filter_map(|p| match p {
            RefOr::T(parameter) if parameter.name == "ids" => parameter.schema.as_mut(),
            _ => None,
        });
        for schema in ids {
            if let RefOr::T(Schema::Array(array)) = schema {
                array.min_items = Some(1);
                array.max_items = Some(crate::transcriptions::MAX_IDS_PER_BATCH);
                array.unique_items = true;
                if let ArrayItems::RefOrSchema(item) = &mut array.items
                    && let RefOr::T(Schema::Object(id)) = item.as_mut()
                {
                    id.minimum = Some(1.into());
                }
            }
        }
    }
}

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
        let bodies = doc["components"]["schemas"]["LockRequest"]["oneOf"]
            .as_array()
            .unwrap()
            .clone();
        let body = |op: &str| {
            bodies
                .iter()
                .find(|b| b["properties"]["op"]["enum"][0] == op)
                .unwrap_or_else(|| panic!("no {op} body"))
                .clone()
        };
        for op in ["acquire", "release", "extend", "inspect"] {
            assert_eq!(body(op)["additionalProperties"], false, "{op}");
            assert!(
                body(op)["required"]
                    .as_array()
                    .unwrap()
                    .contains(&"op".into())
            );
        }
        assert_eq!(body("acquire")["properties"]["wait_ms"]["maximum"], 120000);
        assert_eq!(body("acquire")["properties"]["lease_ms"]["minimum"], 100);
        assert_eq!(body("release")["properties"]["token"]["maxLength"], 128);
    }
}
