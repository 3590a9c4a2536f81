//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! response types, served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::error::{FieldError, ProblemSchema};
use crate::http::health::Capability;
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
    components(schemas(Transcription, TranscriptionBatch, ProblemSchema, FieldError, LockRequest, GrantBody, ReleasedBody, InspectBody, HolderBody, Capability)),
    modifiers(&BearerAuth, &ClosedLockBodies, &BatchIds, &UnsignedIds)
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
                    unsigned_id(id);
                }
            }
        }
    }
}

/// An id is 1..=18446744073709551615 (BIGINT UNSIGNED), as the parser
/// accepts. utoipa writes `u64` as `format: int64`, which says at most
/// 2^63 - 1: a fuzzer then expects 2^63 to be refused.
fn unsigned_id(id: &mut utoipa::openapi::schema::Object) {
    id.format = None;
    id.minimum = Some(1.into());
    id.maximum = usize::try_from(u64::MAX).ok().map(utoipa::Number::UInt);
}

/// The single read's path `id` and every row's `transcription_id`: the same
/// range as a batch's ids.
struct UnsignedIds;

impl Modify for UnsignedIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::Schema;
        let path_id = openapi
            .paths
            .paths
            .get_mut("/transcriptions/{id}")
            .and_then(|item| item.get.as_mut())
            .into_iter()
            .flat_map(|get| get.parameters.iter_mut().flatten())
            .filter_map(|p| match p {
                RefOr::T(parameter) if parameter.name == "id" => parameter.schema.as_mut(),
                _ => None,
            });
        for schema in path_id {
            if let RefOr::T(Schema::Object(id)) = schema {
                unsigned_id(id);
            }
        }
        let row = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("Transcription"));
        if let Some(RefOr::T(Schema::Object(row))) = row
            && let Some(RefOr::T(Schema::Object(id))) = row.properties.get_mut("transcription_id")
        {
            unsigned_id(id);
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key, an OIDC JWT of a configured issuer, or an AWS IAM token \
                         (`mw-aws-v1.`…): docs/API.md, \"Authentication\"",
                    ))
                    .build(),
            ),
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
    fn ids_are_described_as_the_parser_reads_them() {
        let doc = document();
        let path_id = &doc["paths"]["/transcriptions/{id}"]["get"]["parameters"][0]["schema"];
        let batch_id = &doc["paths"]["/transcriptions"]["get"]["parameters"][0]["schema"]["items"];
        let row_id =
            &doc["components"]["schemas"]["Transcription"]["properties"]["transcription_id"];
        for id in [path_id, batch_id, row_id] {
            assert_eq!(id["minimum"], 1, "{id}");
            assert_eq!(id["maximum"], u64::MAX, "{id}");
            assert!(id.get("format").is_none(), "{id}");
        }
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
