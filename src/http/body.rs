//! JSON request bodies: actix's `Json` extractor, configured once. At most
//! 16 KiB (413), `application/json` only (415), and every parse failure a
//! 400 naming the field at fault.
//!
//! serde does not say which field failed inside an internally tagged enum,
//! so request types name their fields in their own error messages, as
//! `"<field>: <message>"` (`"wait_ms: must be ..."`); serde's own messages
//! name them in backquotes (missing, unknown or duplicate field, unknown
//! variant). [`field_error`] reads both.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::JsonPayloadError;
use actix_web::web::{Json, JsonConfig};
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors};

use super::error::{ApiError, FieldError};

/// Request bodies larger than this are refused with 413.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// A body must arrive within this (as the headers must): a client that stalls
/// or trickles would otherwise hold its in-flight place forever.
pub(crate) const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The `Json` extractor's settings for every route that takes a body.
pub(crate) fn json_config() -> JsonConfig {
    JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .content_type_required(true)
        .error_handler(|error, _request| ApiError::from(error).into())
}

/// A JSON object body, parsed and then checked by `validator`: a handler
/// that takes one only ever sees valid values.
#[derive(Debug)]
pub(crate) struct ValidJson<T>(pub T);

impl<T: DeserializeOwned + Validate + 'static> FromRequest for ValidJson<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let charset_refused = !charset_is_utf8(request);
        let json = Json::<JsonObject<T>>::from_request(request, payload);
        Box::pin(async move {
            if charset_refused {
                return Err(ApiError::UnsupportedMediaType.into());
            }
            let value = tokio::time::timeout(BODY_DEADLINE, json)
                .await
                .map_err(|_| ApiError::RequestTimeout)??
                .into_inner()
                .0;
            value
                .validate()
                .map_err(|errors| ApiError::InvalidRequest(validation_error(&errors)))?;
            Ok(ValidJson(value))
        })
    }
}

/// JSON is UTF-8 (RFC 8259): a `charset` parameter naming anything else is 415.
fn charset_is_utf8(request: &HttpRequest) -> bool {
    use actix_web::HttpMessage;
    match request.mime_type() {
        Ok(Some(mime)) => mime
            .get_param(mime::CHARSET)
            .is_none_or(|charset| charset == mime::UTF_8),
        _ => true,
    }
}

/// The first field `validator` refused (by name, so the answer is stable).
fn validation_error(errors: &ValidationErrors) -> FieldError {
    let fields = errors.field_errors();
    let first = fields.iter().min_by(|a, b| a.0.cmp(b.0));
    match first {
        Some((field, problems)) => {
            let message = problems
                .first()
                .and_then(|p| p.message.as_deref())
                .unwrap_or("is out of range");
            FieldError::new(field.as_ref(), message)
        }
        None => FieldError::new("body", "is not valid"),
    }
}

/// A body that must be a JSON object: arrays, strings and `null` are 400s
/// even when `T`, an internally tagged enum, would read an array.
#[derive(Debug)]
pub(crate) struct JsonObject<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectOnly(std::marker::PhantomData))
            .map(JsonObject)
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(error: JsonPayloadError) -> Self {
        match error {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
                ApiError::PayloadTooLarge
            }
            JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
            JsonPayloadError::Deserialize(e) | JsonPayloadError::Serialize(e) => {
                ApiError::InvalidRequest(field_error(&e))
            }
            _ => ApiError::invalid_field("body", "could not be read"),
        }
    }
}

/// The field a serde_json error is about, and why, in words for the caller.
pub(crate) fn field_error(error: &serde_json::Error) -> FieldError {
    use serde_json::error::Category;
    if matches!(
        error.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return FieldError::new("body", format!("is not valid JSON ({error})"));
    }
    let text = error.to_string();
    // serde_json appends the position; the caller's body is short enough without it.
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(t, _)| t);
    let quoted = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(field) = quoted("missing field `") {
        return FieldError::new(field, "is required");
    }
    if let Some(field) = quoted("unknown field `") {
        return FieldError::new(field, "is not a field of this operation");
    }
    if let Some(field) = quoted("duplicate field `") {
        return FieldError::new(field, "appears more than once");
    }
    if let Some(variant) = quoted("unknown variant `") {
        return FieldError::new("op", format!("`{variant}` is not an operation"));
    }
    if text.contains("variant identifier") {
        return FieldError::new("op", "must be a string naming the operation");
    }
    if let Some((field, message)) = text.split_once(": ")
        && !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return FieldError::new(field, message);
    }
    FieldError::new("body", format!("must be a JSON object ({text})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: &str) -> FieldError {
        #[derive(Debug, serde::Deserialize)]
        #[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
        #[allow(dead_code)]
        enum Body {
            Go {
                name: String,
                #[serde(default, deserialize_with = "count")]
                count: u64,
            },
        }
        fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
            use serde::Deserialize;
            u64::deserialize(d).map_err(|_| serde::de::Error::custom("count: must be a count"))
        }
        field_error(&serde_json::from_str::<JsonObject<Body>>(json).unwrap_err())
    }

    #[test]
    fn every_kind_of_serde_error_names_its_field() {
        let cases = [
            (r#"{"op":"go"}"#, "name"),
            (r#"{"op":"go","name":"a","extra":1}"#, "extra"),
            (r#"{"op":"go","op":"go","name":"a"}"#, "op"),
            (r#"{"op":"go","name":"a","name":"b"}"#, "name"),
            (r#"{"op":"stop","name":"a"}"#, "op"),
            (r#"{"op":7}"#, "op"),
            (r#"{"name":"a"}"#, "op"),
            (r#"{"op":"go","name":"a","count":"5"}"#, "count"),
            (r#"[1]"#, "body"),
            (r#"["go", "a"]"#, "body"),
            (r#""go""#, "body"),
            (r#"null"#, "body"),
            (r#"{"op":"go""#, "body"),
            (r#"{"#, "body"),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json).field, field, "{json}");
        }
        assert_eq!(
            field_of(r#"{"op":"go","name":"a","count":"5"}"#).message,
            "must be a count"
        );
    }
}
