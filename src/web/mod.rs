//! Pages for people: the page the OAuth callback sends admins to, where they
//! choose which pages to connect (static HTML that calls the JSON API with
//! the admin's access token, kept in the browser's localStorage), and the
//! page an invitation's link opens (`auth::invitations`), where the invited
//! person sets their password, and the one a password reset's link opens
//! (`auth::password_reset`), and the one a notice mail's unsubscribe link
//! opens (`inbox::notice_mail`): it asks before it stops anything, and the
//! same address takes the one-click `POST` mail apps send (RFC 8058).

use actix_web::{web, HttpResponse};

const CONNECT_PAGE: &str = include_str!("../../templates/connect.html");
const INVITE_PAGE: &str = include_str!("../../templates/invite.html");
const RESET_PAGE: &str = include_str!("../../templates/reset.html");
const UNSUBSCRIBE_PAGE: &str = include_str!("../../templates/unsubscribe.html");
/// The API reference (OpenAPI 3), kept next to the routes it describes.
const OPENAPI: &str = include_str!("../../templates/openapi.json");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::http::resource("/channels/connect").get(connect_page))
        .service(crate::http::resource("/invite").get(invite_page))
        .service(crate::http::resource("/reset").get(reset_page))
        .service(crate::http::resource("/unsubscribe").get(unsubscribe_page).post(unsubscribe))
        .service(crate::http::resource("/api/openapi.json").get(openapi));
}

/// A page of ours: HTML that no other site may frame (the connect page
/// acts with an admin's token; a framed one could be clicked through
/// unseen), and that names no address it came from to what it links to
/// (the unsubscribe page's address holds its token).
pub(crate) fn page(html: impl actix_web::body::MessageBody + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Content-Security-Policy", "frame-ancestors 'none'"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(html)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

async fn connect_page() -> HttpResponse {
    page(CONNECT_PAGE)
}

async fn invite_page() -> HttpResponse {
    page(INVITE_PAGE)
}

async fn reset_page() -> HttpResponse {
    page(RESET_PAGE)
}

async fn unsubscribe_page() -> HttpResponse {
    page(UNSUBSCRIBE_PAGE)
}

#[derive(serde::Deserialize)]
struct UnsubscribeQuery {
    token: Option<String>,
    all: Option<String>,
}

/// `POST /unsubscribe?token=…[&all=true]`: the page's buttons, or a mail
/// app's one-click (its body, `List-Unsubscribe=One-Click`, is not read).
async fn unsubscribe(
    state: web::Data<crate::app::AppState>,
    query: web::Query<UnsubscribeQuery>,
) -> crate::error::AppResult<HttpResponse> {
    let query = query.into_inner();
    let all = match query.all.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(crate::error::AppError::bad_request("invalid_query", "all must be true or false")),
    };
    let token = query.token.unwrap_or_default();
    let key = state.unsubscribe_key.clone();
    let done = state.db.public(move |conn| crate::inbox::notice_mail::unsubscribe(conn, &key, &token, all)).await?;
    Ok(HttpResponse::Ok().json(done))
}
