//! The REST API under `/api/v1`: thin axum handlers over the application layer, described for
//! OpenAPI by `utoipa` annotations. The committed document (`openapi/panal.json`) is generated
//! from these and a test fails when they drift apart.

mod auth;
pub mod cluster;
mod console;
pub mod error;
mod events;
pub mod extract;
mod floating_ips;
mod hosts;
mod images;
mod join_tokens;
mod networks;
mod operations;
mod projects;
mod security_groups;
mod snapshots;
mod vm_migrations;
mod vm_nics;
mod vms;
mod volumes;

use crate::app::App;
use auth::BearerScheme as BearerAddon;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API version prefix.
pub const PREFIX: &str = "/api/v1";

#[derive(OpenApi)]
#[openapi(
    info(title = "Panal API", description = "Panal: a distributed virtualization platform.", version = "1.0.0", license(name = "Apache-2.0")),
    modifiers(&BearerAddon),
    security(("bearer" = [])),
    tags(
        (name = "projects", description = "Tenancy boundaries"),
        (name = "vms", description = "Virtual machines"),
        (name = "hosts", description = "Physical hosts"),
        (name = "images", description = "Bootable images"),
        (name = "volumes", description = "Disks in storage pools"),
        (name = "networks", description = "Virtual networks of a project"),
        (name = "security-groups", description = "Stateful firewall rules for NICs"),
        (name = "floating-ips", description = "External addresses mapped to NICs"),
        (name = "operations", description = "Long-running work"),
        (name = "events", description = "Change stream"),
        (name = "cluster", description = "Control-plane replicas"),
    )
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(projects::get_project, projects::delete_project))
        .routes(routes!(vms::list_vms, vms::create_vm))
        .routes(routes!(vms::create_vms))
        .routes(routes!(vms::get_vm, vms::update_vm, vms::delete_vm))
        .routes(routes!(vms::start_vm))
        .routes(routes!(vms::stop_vm))
        .routes(routes!(vms::restart_vm))
        .routes(routes!(vms::pause_vm))
        .routes(routes!(vms::resume_vm))
        .routes(routes!(hosts::move_back))
        .routes(routes!(vm_migrations::migrate_vm))
        .routes(routes!(vm_migrations::cancel_migration))
        .routes(routes!(console::console))
        .routes(routes!(console::console_log))
        .routes(routes!(images::list_images, images::import_image))
        .routes(routes!(images::get_image, images::delete_image))
        .routes(routes!(volumes::list_volumes, volumes::create_volume))
        .routes(routes!(volumes::get_volume, volumes::delete_volume))
        .routes(routes!(volumes::resize_volume))
        .routes(routes!(volumes::move_volume))
        .routes(routes!(volumes::export_volume))
        .routes(routes!(volumes::attach_volume))
        .routes(routes!(volumes::detach_volume))
        .routes(routes!(networks::list_networks, networks::create_network))
        .routes(routes!(networks::get_network, networks::delete_network))
        .routes(routes!(networks::network_ports))
        .routes(routes!(vm_nics::add_nic))
        .routes(routes!(vm_nics::remove_nic))
        .routes(routes!(
            security_groups::list_security_groups,
            security_groups::create_security_group
        ))
        .routes(routes!(
            security_groups::get_security_group,
            security_groups::delete_security_group
        ))
        .routes(routes!(
            floating_ips::list_floating_ips,
            floating_ips::create_floating_ip
        ))
        .routes(routes!(
            floating_ips::get_floating_ip,
            floating_ips::delete_floating_ip
        ))
        .routes(routes!(floating_ips::associate_floating_ip))
        .routes(routes!(floating_ips::disassociate_floating_ip))
        .routes(routes!(security_groups::add_security_rule))
        .routes(routes!(security_groups::delete_security_rule))
        .routes(routes!(snapshots::create_volume_snapshot))
        .routes(routes!(snapshots::revert_volume_snapshot))
        .routes(routes!(snapshots::delete_volume_snapshot))
        .routes(routes!(snapshots::create_vm_snapshot))
        .routes(routes!(snapshots::revert_vm_snapshot))
        .routes(routes!(snapshots::delete_vm_snapshot))
        .routes(routes!(hosts::list_hosts))
        .routes(routes!(hosts::get_host))
        .routes(routes!(
            join_tokens::list_join_tokens,
            join_tokens::create_join_token
        ))
        .routes(routes!(join_tokens::revoke_join_token))
        .routes(routes!(hosts::cordon_host))
        .routes(routes!(hosts::uncordon_host))
        .routes(routes!(hosts::drain_host))
        .routes(routes!(operations::list_operations))
        .routes(routes!(operations::get_operation))
        .routes(routes!(operations::wait_operation))
        .routes(routes!(events::events))
        .routes(routes!(cluster::cluster))
}

/// The OpenAPI document of the API as the code declares it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The API's router, with authentication on every route but `/healthz` and the document itself.
pub fn router(app: App) -> Router {
    let (api, doc) = api_router().split_for_parts();
    let doc_json = doc.to_pretty_json().unwrap_or_default();
    let protected = api.layer(axum::middleware::from_fn_with_state(
        app.clone(),
        auth::require_token,
    ));
    Router::new()
        .merge(protected)
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc_json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }
            }),
        )
        .fallback(|| async {
            error::Failure(panal_types::ApiError::new(
                panal_types::ErrorCode::NotFound,
                "no such endpoint",
            ))
        })
        .with_state(app)
}
