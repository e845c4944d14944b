//! The REST surface: `/api/v1` routes, health, and the legacy paths of existing clients.
//!
//! Handlers are thin: extract, `into_domain()`, call one use case, wrap the result in the
//! envelope. Errors convert into [`ApiError`](crate::error::ApiError).

pub mod auth;
pub mod categories;
pub mod consent;
pub mod devices;
pub mod docs;
pub mod eligibility;
pub mod events;
pub mod health;
pub mod legacy;
pub mod preferences;
pub mod users;

use actix_web::middleware::from_fn;
use apistos::web::{ServiceConfig, delete, get, patch, post, put, resource, scope};

/// Registers every route. Device routes with a token segment accept raw tokens with
/// slashes (web-push endpoints), so the more specific `/activate` and `/deactivate` routes
/// come first.
pub fn configure(config: &mut ServiceConfig) {
    config
        .service(
            scope("/api/v1")
                .service(resource("/users").route(post().to(users::register)).route(get().to(users::list)))
                .service(resource("/users/").route(post().to(users::register)).route(get().to(users::list)))
                // Before `/users/{id}`, which would otherwise take `lookup` for an id.
                .service(resource("/users/lookup").route(post().to(eligibility::lookup)))
                .service(
                    resource("/users/{id}")
                        .route(get().to(users::get))
                        .route(patch().to(users::update_contact))
                        .route(delete().to(users::delete)),
                )
                .service(resource("/auth/login").route(post().to(auth::login)))
                .service(resource("/eligibility").route(post().to(eligibility::bulk)))
                .service(resource("/users/{id}/eligibility").route(get().to(eligibility::single)))
                .service(resource("/users/{id}/password").route(put().to(users::change_password)))
                .service(
                    resource("/users/{id}/preferences")
                        .route(get().to(preferences::get))
                        .route(put().to(preferences::update)),
                )
                .service(
                    resource("/users/{id}/preferences/categories/{key}")
                        .route(put().to(categories::set_choice))
                        .route(delete().to(categories::clear_choice)),
                )
                .service(resource("/users/{id}/consent-history").route(get().to(consent::history)))
                .service(resource("/events").route(get().to(events::feed)))
                .service(resource("/categories").route(get().to(categories::list)).route(post().to(categories::create)))
                .service(
                    resource("/categories/{key}")
                        .route(get().to(categories::get))
                        .route(patch().to(categories::update))
                        .route(delete().to(categories::remove)),
                )
                .service(
                    resource("/users/{id}/devices").route(post().to(devices::register)).route(get().to(devices::list)),
                )
                .service(resource("/users/{id}/devices/{device:.+}/activate").route(put().to(devices::activate)))
                .service(resource("/users/{id}/devices/{device:.+}/deactivate").route(put().to(devices::deactivate)))
                .service(resource("/users/{id}/devices/{device:.+}").route(delete().to(devices::delete))),
        )
        .service(resource("/health").route(get().to(health::health)))
        .service(resource("/health/live").route(get().to(health::live)))
        .service(resource("/health/ready").route(get().to(health::ready)))
        .service(resource("/metrics").route(get().to(health::metrics)))
        .service(resource("/users/{id}").wrap(from_fn(legacy::deprecation_headers)).route(get().to(legacy::get_user)))
        .service(
            resource("/api/users/{user_id}/devices/{token:.+}/deactivate")
                .wrap(from_fn(legacy::deprecation_headers))
                .route(put().to(legacy::deactivate)),
        )
        // A Windows push endpoint (`...?token=...`) puts the `/deactivate` of the legacy URL
        // into the query string; the handler checks that it ends so.
        .service(
            resource("/api/users/{user_id}/devices/{endpoint:.+}")
                .wrap(from_fn(legacy::deprecation_headers))
                .route(put().to(legacy::deactivate_with_query)),
        );
}
