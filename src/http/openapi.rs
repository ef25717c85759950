//! Each route is registered together with its documentation (`Routes::add`), and the
//! OpenAPI 3.1 document at `/openapi.json` is built from exactly those entries, so the
//! two cannot drift. `/docs` renders that document in the browser, without any CDN.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

use super::AppState;

/// One field of a request: from the query string or the body (JSON or form).
pub struct Field {
    pub name: &'static str,
    /// A JSON Schema type ("string", "integer", "array", "object").
    pub kind: &'static str,
    pub required: bool,
    pub about: &'static str,
}

pub const fn field(
    name: &'static str,
    kind: &'static str,
    required: bool,
    about: &'static str,
) -> Field {
    Field {
        name,
        kind,
        required,
        about,
    }
}

/// One possible answer: the HTTP status and the `status_code`s it carries.
pub struct Answer {
    pub status: u16,
    pub codes: &'static [&'static str],
    pub about: &'static str,
}

pub const fn answer(status: u16, codes: &'static [&'static str], about: &'static str) -> Answer {
    Answer {
        status,
        codes,
        about,
    }
}

/// What every route documents.
pub struct Doc {
    pub path: String,
    pub methods: &'static [&'static str],
    pub tag: &'static str,
    pub summary: String,
    pub fields: Vec<Field>,
    pub answers: Vec<Answer>,
    /// Not behind Basic auth.
    pub open: bool,
    /// The 200 answer is not the JSON envelope (metrics, the docs page).
    pub plain: Option<&'static str>,
    /// Whether GET reads the fields too (a GET that only shows does not).
    pub fields_on_get: bool,
}

/// Answers every route may give.
pub const COMMON: &[Answer] = &[
    answer(
        401,
        &["unauthorized"],
        "Basic auth is on and the credentials are missing or wrong",
    ),
    answer(
        405,
        &["method_not_allowed"],
        "this route does not take that method",
    ),
    answer(
        413,
        &["payload_too_large"],
        "the body is larger than 64 KiB",
    ),
    answer(
        500,
        &["internal"],
        "a fault inside otpd; details go to its log only",
    ),
    answer(
        503,
        &["store_unavailable"],
        "the store cannot be reached; retry after Retry-After",
    ),
];

/// The router and the documentation of everything in it, built together.
pub struct Routes {
    router: Router<AppState>,
    docs: Vec<Doc>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            docs: Vec::new(),
        }
    }
}

impl Routes {
    pub fn add(mut self, doc: Doc, handler: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(&doc.path, handler);
        self.docs.push(doc);
        self
    }

    /// The path patterns of every route.
    pub fn paths(&self) -> Vec<String> {
        self.docs.iter().map(|d| d.path.clone()).collect()
    }

    /// The router, and the OpenAPI document of its routes (served at `/openapi.json`).
    pub fn finish(self) -> (Router<AppState>, Value) {
        let spec = document(&self.docs);
        (self.router, spec)
    }
}

fn envelope_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "boolean"},
            "status_code": {"type": "string", "description": "why the answer is no"},
            "message": {"type": "string", "description": "the reason, in words"},
            "content": {"description": "the result, when there is one"}
        }
    })
}

/// The OpenAPI 3.1 document of `docs`.
pub fn document(docs: &[Doc]) -> Value {
    let mut paths = Map::new();
    for doc in docs {
        let mut operations = Map::new();
        for method in doc.methods {
            operations.insert(method.to_ascii_lowercase(), operation(doc, method));
        }
        // OpenAPI writes path parameters as {name}, as axum does.
        paths.insert(doc.path.clone(), Value::Object(operations));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "otpd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "One-time passwords by SMS, robotic call, e-mail or Telegram. \
                Parameters come from the query string merged with a JSON or form body (the \
                body wins), on every method. Every JSON answer is the envelope \
                {status, status_code?, message?, content?}."
        },
        "paths": paths,
        "components": {
            "schemas": {"Envelope": envelope_schema()},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                "description": "only when HTTP_AUTH_USERNAME and HTTP_AUTH_PASSWORD are set"}}
        }
    })
}

fn operation(doc: &Doc, method: &str) -> Value {
    let mut op = json!({
        "tags": [doc.tag],
        "summary": doc.summary,
        "operationId": format!("{}{}", method.to_ascii_lowercase(), doc.path.replace(['/', '{', '}'], "_")),
        "responses": responses(doc),
    });
    if !doc.open {
        op["security"] = json!([{"basic": []}]);
    }
    let mut parameters = Vec::new();
    for segment in doc.path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            parameters.push(json!({"name": name, "in": "path", "required": true,
                "schema": {"type": "string"}}));
        }
    }
    let fields: &[Field] = if method == "GET" && !doc.fields_on_get {
        &[]
    } else {
        &doc.fields
    };
    if method == "GET" {
        // A GET takes its fields from the query string (a JSON body works too, as the
        // brief's examples send it).
        for f in fields {
            parameters.push(
                json!({"name": f.name, "in": "query", "required": f.required,
                "description": f.about, "schema": field_schema(f)}),
            );
        }
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if method != "GET" && !fields.is_empty() {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for f in fields {
            let mut schema = field_schema(f);
            schema["description"] = json!(f.about);
            properties.insert(f.name.to_owned(), schema);
            if f.required {
                required.push(f.name);
            }
        }
        let schema = json!({"type": "object", "properties": properties, "required": required});
        op["requestBody"] = json!({
            "description": "The fields, as JSON or form data; each may also be given in the query string.",
            "required": false,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema}
            }
        });
    }
    op
}

fn field_schema(f: &Field) -> Value {
    match f.kind {
        // Numbers may also be sent as numeric strings.
        "integer" => json!({"type": ["integer", "string"]}),
        // Lists, given in a query string, are JSON text.
        "array" => json!({"type": ["array", "string"]}),
        kind => json!({"type": kind}),
    }
}

fn responses(doc: &Doc) -> Value {
    let mut out = Map::new();
    let mut by_status: Vec<&Answer> = doc.answers.iter().collect();
    // The answers every route may give, unless the route says otherwise: no 401 where
    // Basic auth does not apply, and a plain route (metrics, this document) only 401.
    let own = |status| doc.answers.iter().any(|a| a.status == status);
    by_status.extend(COMMON.iter().filter(|a| {
        !own(a.status)
            && match a.status {
                401 => !doc.open,
                _ => doc.plain.is_none(),
            }
    }));
    for a in by_status {
        let entry = out
            .entry(a.status.to_string())
            .or_insert_with(|| json!({"description": "", "codes": []}));
        let description = entry["description"].as_str().unwrap_or_default().to_owned();
        entry["description"] = json!(if description.is_empty() {
            a.about.to_owned()
        } else {
            format!("{description}; {}", a.about)
        });
        if let Some(codes) = entry["codes"].as_array_mut() {
            codes.extend(a.codes.iter().map(|c| json!(c)));
        }
    }
    for (status, entry) in out.iter_mut() {
        let codes = entry["codes"].take();
        let mut schema = json!({"$ref": "#/components/schemas/Envelope"});
        if codes.as_array().is_some_and(|c| !c.is_empty()) {
            schema = json!({"allOf": [schema, {"properties": {"status_code": {"enum": codes}}}]});
        }
        let media = match (status.as_str(), doc.plain) {
            ("200", Some(media)) => {
                let kind = if media == "application/json" {
                    "object"
                } else {
                    "string"
                };
                json!({ media: {"schema": {"type": kind}} })
            }
            _ => json!({"application/json": {"schema": schema}}),
        };
        *entry = json!({"description": entry["description"], "content": media});
    }
    Value::Object(out)
}

/// A page that renders `/openapi.json`; everything it needs is inline.
pub async fn page() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("docs.html")),
    )
        .into_response()
}
