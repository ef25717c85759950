//! Request parameters: the query string merged with a JSON or form body (body keys win),
//! on every method, as the brief's clients send them (GET with a JSON body included).

use std::collections::HashMap;
use std::fmt;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::error::ApiError;

pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Params(HashMap<String, Value>);

impl Params {
    /// A string field, trimmed; absent, `null` and empty all read as `None`.
    pub fn text(&self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            Some(Value::Number(_)) => Err(ApiError::invalid(name, "must be a string")),
            _ => self.text_or_number(name),
        }
    }

    /// Like `text`, but a whole number is taken as its decimal text: phones, chat ids and
    /// codes are often sent as JSON numbers.
    pub fn text_or_number(&self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let s = s.trim();
                Ok((!s.is_empty()).then(|| s.to_owned()))
            }
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    /// A whole number, given as a JSON number or as numeric text.
    pub fn integer(&self, name: &'static str) -> Result<Option<i64>, ApiError> {
        let invalid = || ApiError::invalid(name, "must be a whole number");
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(invalid),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| invalid()),
            Some(_) => Err(invalid()),
        }
    }

    /// The raw value, for structured fields; JSON text in a string (all a form body can
    /// carry) is decoded.
    pub fn structured(&self, name: &'static str) -> Result<Option<Value>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|_| ApiError::invalid(name, "must be JSON")),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    /// Every parameter as one JSON object with sorted keys, whatever order they came
    /// in (the input of `Secret::request_fingerprint`). JSON escapes NUL, so the bytes
    /// hold none.
    pub fn canonical(&self) -> Vec<u8> {
        let sorted: std::collections::BTreeMap<_, _> = self.0.iter().collect();
        serde_json::to_vec(&sorted).unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The parameters of a request from its query string, whether its body is declared
    /// as a form, and its body. Pure, so the micro-benchmark, property tests and the
    /// fuzz target call it directly.
    pub fn parse(query: Option<&str>, is_form: bool, body: &[u8]) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        if let Some(query) = query {
            insert_unique(&mut params, form_pairs(query.as_bytes()))?;
        }
        let body = body.trim_ascii();
        if body.is_empty() {
            return Ok(Params(params));
        }
        let fields = if is_form && !matches!(body.first(), Some(b'{' | b'[')) {
            form_pairs(body)
        } else {
            json_object(body)?
        };
        let mut from_body = HashMap::new();
        insert_unique(&mut from_body, fields)?;
        params.extend(from_body);
        Ok(Params(params))
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let body = read_body(body).await?;
        Params::parse(parts.uri.query(), is_form, &body)
    }
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                if err.is::<http_body_util::LengthLimitError>() {
                    return ApiError::PayloadTooLarge;
                }
                source = err.source();
            }
            ApiError::InvalidBody("the body could not be read")
        })
}

fn form_pairs(bytes: &[u8]) -> Vec<(String, Value)> {
    form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// A field given twice is ambiguous (which one did the caller mean?), so it is refused.
fn insert_unique(
    into: &mut HashMap<String, Value>,
    fields: Vec<(String, Value)>,
) -> Result<(), ApiError> {
    for (key, value) in fields {
        if into.insert(key.clone(), value).is_some() {
            return Err(ApiError::invalid(key, "is given more than once"));
        }
    }
    Ok(())
}

/// The top-level object's entries in order, duplicates kept so they can be refused.
fn json_object(bytes: &[u8]) -> Result<Vec<(String, Value)>, ApiError> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry::<String, Value>()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    let invalid = |_| ApiError::InvalidBody("the body must be a JSON object or form data");
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let entries = (&mut de).deserialize_map(Entries).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(entries)
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    proptest! {
        #[test]
        fn any_request_is_parsed_or_refused_without_panicking(
            query in ".{0,64}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            is_form: bool,
        ) {
            let _ = Params::parse(Some(&query), is_form, &body);
        }

        #[test]
        fn json_and_form_bodies_give_the_same_trimmed_fields(
            phone in "[ ]{0,2}[0-9+() -]{0,20}[ ]{0,2}",
            password in "[a-zA-Z0-9 ]{0,12}",
        ) {
            let body = json!({"phone": phone, "password": password}).to_string();
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("phone", &phone)
                .append_pair("password", &password)
                .finish();
            let from_json = Params::parse(None, false, body.as_bytes()).unwrap();
            let from_form = Params::parse(None, true, form.as_bytes()).unwrap();
            for name in ["phone", "password"] {
                prop_assert_eq!(from_json.text(name).ok(), from_form.text(name).ok());
            }
            let trimmed = phone.trim();
            prop_assert_eq!(
                from_json.text("phone").ok().flatten(),
                (!trimmed.is_empty()).then(|| trimmed.to_owned())
            );
        }

        #[test]
        fn body_fields_win_over_the_query_and_order_does_not_matter(
            in_query in "[a-z0-9]{1,10}",
            in_body in "[a-z0-9]{1,10}",
        ) {
            let query = format!("password={in_query}&phone=1");
            let body = json!({"password": in_body}).to_string();
            let params = Params::parse(Some(&query), false, body.as_bytes()).unwrap();
            prop_assert_eq!(params.text("password").unwrap(), Some(in_body.clone()));
            prop_assert_eq!(params.text("phone").unwrap(), Some("1".to_owned()));
            let reordered = format!("phone=1&password={in_query}");
            let again = Params::parse(Some(&reordered), false, body.as_bytes()).unwrap();
            prop_assert_eq!(again.canonical(), params.canonical());
        }
    }
}
