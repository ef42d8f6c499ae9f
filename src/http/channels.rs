//! `/api/channels/*`: connecting and managing pages, Instagram accounts and
//! WhatsApp numbers.

use super::json::Json;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::pagination::{PageQuery, Paged};
use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::channels::connect::{self, WhatsappGrant};
use crate::channels::{self, ChannelId, ChannelPatch};
use crate::error::{AppError, AppResult};
use crate::ids::percent_encode;
use crate::secret::Secret;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/channels").get(list))
        .service(resource("/channels/facebook/oauth/start").post(oauth_start))
        .service(resource("/channels/facebook/oauth/callback").get_only(oauth_callback))
        .service(resource("/channels/facebook/pending/{selection_id}").get(pending))
        .service(resource("/channels/facebook/connect").post(connect_facebook))
        .service(resource("/channels/whatsapp/connect").post(connect_whatsapp))
        .service(resource("/channels/{id}").get(get_one).patch(patch).delete(delete))
        .service(resource("/channels/{id}/members").put(set_members))
        .service(resource("/channels/{id}/check").post(check))
        .service(resource("/channels/{id}/templates").get(templates).post(submit_template))
        .service(resource("/channels/{id}/templates/{name}").delete(delete_template));
}

fn channel_id(raw: &str) -> AppResult<ChannelId> {
    ChannelId::parse(raw).ok_or_else(|| AppError::not_found("channel"))
}

async fn list(state: web::Data<AppState>, auth: AuthContext, q: web::Query<PageQuery>) -> AppResult<HttpResponse> {
    let page = q.parse()?;
    let (user, role) = (auth.user, auth.role);
    let items = state.db.tenant(auth.scope(), move |tc| channels::list(tc, user, role, page.after, page.limit)).await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |c| c.id.0)))
}

async fn get_one(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    let id = channel_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let view = state
        .db
        .tenant(auth.scope(), move |tc| {
            if !channels::can_see(tc, user, role, id)? {
                return Err(AppError::not_found("channel"));
            }
            channels::get_view(tc, id)
        })
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

async fn oauth_start(state: web::Data<AppState>, auth: AuthContext) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let url = connect::start_facebook(&state, &auth).await?;
    Ok(HttpResponse::Ok().json(json!({ "url": url })))
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn wants_json(req: &HttpRequest) -> bool {
    req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

/// Browsers come back here from Meta's dialog: they are redirected to the
/// connect page; a client that asks for JSON gets the selection itself.
async fn oauth_callback(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<CallbackQuery>,
) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let page = format!("{}/channels/connect", state.config.public_url);
    if let Some(error) = q.error {
        if wants_json(&req) {
            let why = q.error_description.unwrap_or_else(|| error.clone());
            return Err(AppError::bad_request("oauth_denied", format!("Meta login did not complete: {why}")));
        }
        let location = format!("{page}?error={}", percent_encode(&error));
        return Ok(HttpResponse::Found().insert_header((header::LOCATION, location)).finish());
    }
    let (Some(code), Some(st)) = (q.code, q.state) else {
        return Err(AppError::bad_request("invalid_callback", "code and state are required"));
    };
    let selection = connect::facebook_callback(&state, &code, &st).await?;
    if wants_json(&req) {
        return Ok(HttpResponse::Ok().json(selection));
    }
    let location = format!("{page}?selection_id={}", percent_encode(&selection.selection_id));
    Ok(HttpResponse::Found().insert_header((header::LOCATION, location)).finish())
}

async fn pending(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let selection = connect::pending(&state, &auth, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(selection))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    selection_id: String,
    page_ids: Vec<String>,
    #[serde(default)]
    instagram: bool,
}

async fn connect_facebook(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<ConnectBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let b = body.into_inner();
    let items = connect::connect_facebook(&state, &auth, b.selection_id, b.page_ids, b.instagram).await?;
    // Every list is `{items, next_cursor}` (API.md); this one is whole.
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": null })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhatsappBody {
    code: Option<String>,
    waba_id: Option<String>,
    access_token: Option<Secret<String>>,
}

async fn connect_whatsapp(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<WhatsappBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let grant = match body.into_inner() {
        WhatsappBody { code: Some(code), waba_id: None, access_token: None } => WhatsappGrant::code(code)?,
        WhatsappBody { code: None, waba_id: Some(waba_id), access_token: Some(token) } => {
            WhatsappGrant::token(waba_id, token)?
        }
        _ => return Err(AppError::invalid("invalid_body", "send either {code} or {waba_id, access_token}")),
    };
    let items = connect::connect_whatsapp(&state, &auth, grant).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": null })))
}

async fn patch(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<ChannelPatch>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = channel_id(&path)?;
    let actor = auth.user;
    let online = state.online.of(auth.tenant);
    let view =
        state.db.tenant(auth.scope(), move |tc| channels::patch(tc, actor, id, body.into_inner(), &online)).await?;
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::Ok().json(view))
}

async fn set_members(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<super::MembersBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = channel_id(&path)?;
    let actor = auth.user;
    let users = body.into_inner().user_ids;
    let online = state.online.of(auth.tenant);
    let view = state
        .tenant_with_events(auth.scope(), move |tc, log| channels::set_members(tc, log, actor, id, &users, &online))
        .await?;
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Deserialize)]
struct DeleteQuery {
    purge: Option<String>,
}

async fn delete(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    q: web::Query<DeleteQuery>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = channel_id(&path)?;
    let purge = match q.purge.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(AppError::bad_request("invalid_query", "purge must be true or false")),
    };
    connect::disconnect(&state, &auth, id, purge).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A WhatsApp channel's message templates, as Meta has them now.
async fn templates(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let id = channel_id(&path)?;
    let items = crate::inbox::templates::list(&state, auth.scope(), auth.user, auth.role, id).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// `POST /api/channels/{id}/templates` (admins): a new template sent to
/// Meta for review; 201, or 200 for a retry (`inbox::template_authoring`).
async fn submit_template(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<crate::inbox::template_authoring::NewTemplate>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = channel_id(&path)?;
    let (template, made) =
        crate::inbox::template_authoring::create(&state, auth.scope(), auth.user, auth.role, id, body.into_inner())
            .await?;
    Ok(if made { HttpResponse::Created() } else { HttpResponse::Ok() }.json(template))
}

/// `DELETE /api/channels/{id}/templates/{name}` (admins): every language.
async fn delete_template(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let (id, name) = path.into_inner();
    let id = channel_id(&id)?;
    crate::inbox::template_authoring::delete(&state, auth.scope(), auth.user, auth.role, id, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn check(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = channel_id(&path)?;
    let view = connect::check_health(&state, auth.scope(), id).await?;
    Ok(HttpResponse::Ok().json(view))
}
