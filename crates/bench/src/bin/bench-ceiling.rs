//! The framework ceiling: an actix-web server that answers every `GET` with a fixed JSON
//! body of a given size, with no database, cache, authentication or middleware.
//!
//! `make bench` sizes the body like a cached `GET /api/v1/users/{id}` response and gives it
//! the same number of workers as the service, so the ratio of the two throughputs says how
//! much of the framework's speed the service keeps.
//!
//! Usage: `bench-ceiling <port> <body-bytes> <workers>`.

use actix_web::{App, HttpResponse, HttpServer, http::header::ContentType, web};

/// The settings read from the command line.
#[derive(Debug)]
struct Arguments {
    port: u16,
    body_bytes: usize,
    workers: usize,
}

fn parse_arguments() -> Result<Arguments, String> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [port, body_bytes, workers] = arguments.as_slice() else {
        return Err("usage: bench-ceiling <port> <body-bytes> <workers>".to_owned());
    };
    Ok(Arguments {
        port: port.parse().map_err(|_| format!("invalid port: {port}"))?,
        body_bytes: body_bytes.parse().map_err(|_| format!("invalid body size: {body_bytes}"))?,
        workers: workers.parse().ok().filter(|&n: &usize| n > 0).ok_or(format!("invalid workers: {workers}"))?,
    })
}

/// A syntactically valid JSON object of exactly `size` bytes (at least 16).
fn json_body(size: usize) -> String {
    let prefix = r#"{"success":true,"data":""#;
    let suffix = r#""}"#;
    let filler = size.saturating_sub(prefix.len() + suffix.len());
    format!("{prefix}{}{suffix}", "x".repeat(filler))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let arguments = parse_arguments().map_err(std::io::Error::other)?;
    // Built once, outside the per-worker factory; each answer clones a cheap `Bytes` handle.
    let body = web::Bytes::from(json_body(arguments.body_bytes));
    HttpServer::new(move || {
        let body = body.clone();
        App::new().default_service(web::to(move || {
            let body = body.clone();
            async move { HttpResponse::Ok().content_type(ContentType::json()).body(body) }
        }))
    })
    .workers(arguments.workers)
    .bind(("127.0.0.1", arguments.port))?
    .run()
    .await
}

#[cfg(test)]
mod tests {
    use super::json_body;

    #[test]
    fn the_body_has_the_requested_size_and_is_json() {
        for size in [40, 1_234, 4_096] {
            let body = json_body(size);
            assert_eq!(body.len(), size);
            assert!(body.starts_with('{') && body.ends_with('}'));
        }
    }
}
