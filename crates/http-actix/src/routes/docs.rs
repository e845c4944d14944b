//! `/docs`: Swagger UI for `/openapi.json`, served entirely from the binary.
//!
//! The UI's script and style sheet come from the `swagger-ui-dist` crate (a pinned Swagger
//! UI release compiled in); the page and its start-up script are ours, so that the page holds
//! no inline script. Every answer under `/docs` carries a Content-Security-Policy that allows
//! our own origin only: the page works without internet (air-gapped clusters), and no new
//! upstream release, and no other origin, ever runs code in ours.

use actix_web::dev::HttpServiceFactory;
use actix_web::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};
use swagger_ui_dist::{ApiDefinition, OpenApiSource};

/// Our own origin only. Swagger UI sets styles from its script (allowed) and shows a few
/// images as `data:` URIs.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                      form-action 'self'; frame-ancestors 'none'";

/// The page: the UI's files and our start-up script, nothing inline.
const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>user-service API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-initializer.js"></script>
</body>
</html>
"#;

/// Starts the UI on our document. `validatorUrl: null`: Swagger UI would otherwise send the
/// document to validator.swagger.io.
const INITIALIZER: &str = r##"window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null, deepLinking: true });
});
"##;

/// The `/docs` scope.
pub fn service() -> impl HttpServiceFactory {
    let page = || async { HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAGE) };
    web::scope("/docs")
        .wrap(DefaultHeaders::new().add((CONTENT_SECURITY_POLICY, POLICY)).add((X_CONTENT_TYPE_OPTIONS, "nosniff")))
        // Registered before the crate's routes, so that ours answer the page.
        .route("", web::get().to(page))
        .route("/", web::get().to(page))
        .route(
            "/swagger-initializer.js",
            web::get().to(|| async {
                HttpResponse::Ok().insert_header((CONTENT_TYPE, "text/javascript; charset=utf-8")).body(INITIALIZER)
            }),
        )
        // The crate's script, style sheet and maps. It also serves an index page of its own
        // (shadowed by ours above) and the document URI it is given: naming its own script
        // there adds no route of its own.
        .service(swagger_ui_dist::generate_scope(ApiDefinition {
            uri_prefix: "",
            api_definition: OpenApiSource::Uri("/swagger-ui-bundle.js"),
            title: Some("user-service API"),
        }))
}
