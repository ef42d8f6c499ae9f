//! `/api/conversations`, `/api/contacts`, `/api/canned-responses`.

use super::json::Json;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::pagination::{decode_time_cursor, encode_time_cursor, parse_limit, PageQuery, Paged};
use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::inbox::conversations::{self, FilterParams, Patch};
use crate::inbox::mentions::Mentions;
use crate::inbox::{canned, contact_links, contacts, messages, ConversationId, MessageId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/conversations").get(list).post(start))
        // Before `{id}`, which would otherwise claim it.
        .service(resource("/conversations/bulk").post(patch_many))
        .service(resource("/conversations/counts").get(counts))
        .service(resource("/conversations/{id}").get(get_one).patch(patch))
        .service(resource("/conversations/{id}/read").post(read))
        .service(resource("/conversations/{id}/unread").post(unread))
        .service(resource("/conversations/{id}/typing").post(typing))
        .service(resource("/conversations/{id}/thread-control").post(thread_control))
        .service(resource("/conversations/{id}/messages").get(list_messages).post(send))
        .service(resource("/conversations/{id}/transcript").get_only(transcript))
        .service(resource("/mentions").get(list_mentions))
        .service(resource("/notifications").get(list_notifications))
        .service(resource("/notifications/read").post(read_notifications))
        .service(resource("/views").get(list_views).post(create_view))
        .service(resource("/views/{id}").patch(update_view).delete(delete_view))
        .service(resource("/macros").get(list_macros).post(create_macro))
        .service(resource("/macros/{id}").patch(update_macro).delete(delete_macro))
        .service(resource("/conversations/{id}/macros/{macro_id}").post(run_macro))
        .service(resource("/messages/{id}").patch(edit_note).delete(delete_note))
        .service(resource("/messages/{id}/reaction").put(react).delete(unreact))
        .service(resource("/messages/{id}/retry").post(retry_message))
        .service(resource("/messages/{id}/attachments/{index}").get(attachment))
        .service(resource("/messages/{id}/attachments/{index}/link").post(attachment_link))
        .service(resource("/labels").get(list_labels))
        .service(resource("/contacts").get(list_contacts))
        .service(resource("/contacts.csv").get_only(export_contacts))
        // Before `{id}`, which would otherwise claim it for its DELETE.
        .service(
            resource("/contacts/import")
                .app_data(web::PayloadConfig::new(crate::inbox::contact_import::MOST_BYTES))
                .post(import_contacts),
        )
        .service(resource("/contacts/{id}").get(get_contact).patch(update_contact).delete(erase_contact))
        .service(resource("/contacts/{id}/links").post(link_contact).delete(unlink_contact))
        .service(resource("/canned-responses").get(list_canned).post(create_canned))
        .service(resource("/canned-responses/{id}").patch(update_canned).delete(delete_canned));
}

fn conversation_id(raw: &str) -> AppResult<ConversationId> {
    ConversationId::parse(raw).ok_or_else(|| AppError::not_found("conversation"))
}

/// A message id from a path; one that names no message is not found.
fn message_id(raw: &str) -> AppResult<MessageId> {
    MessageId::parse(raw).ok_or_else(|| AppError::not_found("message"))
}

/// A contact id from a path; one that names no contact is not found.
fn contact_id(raw: &str) -> AppResult<crate::inbox::ContactId> {
    crate::inbox::ContactId::parse(raw).ok_or_else(|| AppError::not_found("contact"))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    filters: FilterParams,
    /// A saved view's filters (`inbox::saved_views`), under those given here.
    view: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(state: web::Data<AppState>, auth: AuthContext, q: web::Query<ListQuery>) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let limit = parse_limit(q.limit.as_deref())?;
    let after = q.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_time_cursor).transpose()?;
    let view = q.view.as_deref().filter(|v| !v.is_empty()).map(saved_view_id).transpose()?;
    let (user, role) = (auth.user, auth.role);
    let given = q.filters;
    // Checked before any database work, a view's filters after it is read.
    let filter = given.filter(user)?;
    let (items, stale, filter) = state
        .db
        .tenant(auth.scope(), move |tc| {
            let filter = with_view(tc, user, view, given, filter)?;
            let items = conversations::list(tc, user, role, &filter, after, limit)?;
            let contacts: Vec<i64> = items.iter().map(|c| c.contact.id.0).collect();
            Ok::<_, AppError>((items, contacts::stale_profiles(tc, &contacts, Utc::now())?, filter))
        })
        .await?;
    crate::inbox::sender::refresh_stale_profiles(&state, stale);
    let next = if items.len() as i64 >= limit {
        items.last().map(|c| encode_time_cursor(filter.order.keyed_at(c), c.id.0))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": next})))
}

/// The filter a list (or its counts) applies: `given` (already checked
/// as `filter`), over saved view `view`'s when it names one.
fn with_view(
    tc: &mut crate::db::TenantConn<'_>,
    user: crate::ids::UserId,
    view: Option<i64>,
    given: FilterParams,
    filter: conversations::Filter,
) -> AppResult<conversations::Filter> {
    match view {
        Some(id) => crate::inbox::saved_views::find(tc, user, id)?.filters.overlaid(given).filter(user),
        None => Ok(filter),
    }
}

#[derive(Deserialize)]
struct CountsQuery {
    #[serde(flatten)]
    filters: FilterParams,
    view: Option<String>,
}

/// `GET /api/conversations/counts` with the list's filters (or a saved
/// view): the inbox's badges (`conversations::counts`).
async fn counts(state: web::Data<AppState>, auth: AuthContext, q: web::Query<CountsQuery>) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let view = q.view.as_deref().filter(|v| !v.is_empty()).map(saved_view_id).transpose()?;
    let (user, role) = (auth.user, auth.role);
    let given = q.filters;
    let filter = given.filter(user)?;
    let counts = state
        .db
        .tenant(auth.scope(), move |tc| {
            let filter = with_view(tc, user, view, given, filter)?;
            conversations::counts(tc, user, role, &filter)
        })
        .await?;
    Ok(HttpResponse::Ok().json(counts))
}

async fn get_one(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    let id = conversation_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let (view, stale) = state
        .db
        .tenant(auth.scope(), move |tc| {
            let view = conversations::get(tc, user, role, id)?;
            let stale = contacts::stale_profiles(tc, &[view.contact.id.0], Utc::now())?;
            Ok::<_, AppError>((view, stale))
        })
        .await?;
    crate::inbox::sender::refresh_stale_profiles(&state, stale);
    Ok(HttpResponse::Ok().json(view))
}

/// `{status?, assignee_id?, snoozed_until?, labels? | add_labels?,
/// remove_labels?, priority?, team_id?}`; `assignee_id: null` unassigns
/// (`team_id: null` takes it from its team); `labels`
/// replaces the set, `add_labels` and `remove_labels` change it;
/// `priority: null` takes it away.
fn parse_patch(body: Map<String, Value>) -> AppResult<Patch> {
    let mut p = Patch::default();
    for (k, v) in body {
        match (k.as_str(), v) {
            ("status", Value::String(s)) => p.status = Some(s),
            ("assignee_id", Value::Null) => p.assignee_id = Some(None),
            ("assignee_id", v @ (Value::String(_) | Value::Number(_))) => {
                let u: UserId = serde_json::from_value(v)
                    .map_err(|_| AppError::invalid("invalid_assignee", "assignee_id is not a user id"))?;
                p.assignee_id = Some(Some(u));
            }
            (k @ ("labels" | "add_labels" | "remove_labels"), Value::Array(items)) => {
                let labels = items.into_iter().map(|l| match l {
                    Value::String(l) => Ok(l),
                    _ => Err(AppError::invalid("invalid_label", "labels are strings")),
                });
                let labels = labels.collect::<AppResult<Vec<_>>>()?;
                match k {
                    "labels" => p.labels = Some(labels),
                    "add_labels" => p.add_labels = labels,
                    _ => p.remove_labels = labels,
                }
            }
            ("team_id", Value::Null) => p.team_id = Some(None),
            ("team_id", v @ (Value::String(_) | Value::Number(_))) => {
                let t: crate::inbox::teams::TeamId = serde_json::from_value(v)
                    .map_err(|_| AppError::invalid("invalid_team", "team_id is not a team id"))?;
                p.team_id = Some(Some(t));
            }
            ("priority", Value::Null) => p.priority = Some(None),
            ("priority", Value::String(s)) => p.priority = Some(Some(s)),
            ("snoozed_until", Value::Null) => p.snoozed_until = Some(None),
            ("snoozed_until", Value::String(s)) => {
                let t = DateTime::parse_from_rfc3339(&s)
                    .map_err(|_| AppError::invalid("invalid_snooze", "snoozed_until must be an RFC 3339 time"))?;
                p.snoozed_until = Some(Some(t.with_timezone(&Utc)));
            }
            (
                k @ ("status" | "assignee_id" | "snoozed_until" | "labels" | "add_labels" | "remove_labels"
                | "priority" | "team_id"),
                _,
            ) => return Err(AppError::invalid("invalid_body", format!("{k} has the wrong type"))),
            (k, _) => return Err(AppError::invalid("invalid_body", format!("unknown field `{k}`"))),
        }
    }
    if p.labels.is_some() && !(p.add_labels.is_empty() && p.remove_labels.is_empty()) {
        return Err(AppError::invalid(
            "invalid_body",
            "give `labels` (the whole set) or `add_labels`/`remove_labels`, not both",
        ));
    }
    Ok(p)
}

async fn patch(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<Map<String, Value>>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    let p = parse_patch(body.into_inner())?;
    let wakes = p.may_make_room();
    let (user, role) = (auth.user, auth.role);
    let online = state.online.of(auth.tenant);
    let view = state
        .tenant_with_events(auth.scope(), move |tc, log| conversations::patch(tc, log, user, role, id, p, &online))
        .await?;
    if view.status == "resolved" {
        // It may have queued a satisfaction survey (`inbox::csat`).
        state.wake_sender.notify_one();
    }
    if wakes {
        state.online.room_changed(auth.tenant);
    }
    Ok(HttpResponse::Ok().json(view))
}

/// `{ids, …}` with what a PATCH of one takes: the same change
/// to each conversation of `ids` (`conversations::patch_many`), all or none.
async fn patch_many(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<Map<String, Value>>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let mut body = body.into_inner();
    let most = conversations::MOST_AT_ONCE;
    let invalid = || AppError::invalid("invalid_ids", format!("ids is a list of 1 to {most} conversation ids"));
    let Some(Value::Array(given)) = body.remove("ids") else { return Err(invalid()) };
    let mut ids: Vec<ConversationId> = Vec::with_capacity(given.len());
    for v in given {
        // An id that names no conversation is not found, as in a path.
        let id = match &v {
            Value::String(s) => conversation_id(s)?,
            Value::Number(n) => conversation_id(&n.to_string())?,
            _ => return Err(AppError::not_found("conversation")),
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() || ids.len() > most {
        return Err(invalid());
    }
    let p = parse_patch(body)?;
    let wakes = p.may_make_room();
    let (user, role) = (auth.user, auth.role);
    let online = state.online.of(auth.tenant);
    let items = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            conversations::patch_many(tc, log, user, role, &ids, &p, &online)
        })
        .await?;
    if items.iter().any(|c| c.status == "resolved") {
        state.wake_sender.notify_one();
    }
    if wakes {
        state.online.room_changed(auth.tenant);
    }
    // Every list is `{items, next_cursor}` (API.md); this one is whole.
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": null})))
}

async fn read(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let queued = state
        .tenant_with_events(auth.scope(), move |tc, log| conversations::mark_read(tc, log, user, role, id))
        .await?;
    if queued {
        state.wake_sender.notify_one();
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Marks it unread again for the team (`conversations::mark_unread`).
async fn unread(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    state.tenant_with_events(auth.scope(), move |tc, log| conversations::mark_unread(tc, log, user, role, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingBody {
    #[serde(default = "crate::realtime::typing_on_by_default")]
    on: bool,
}

/// The same as a socket's `typing` message: colleagues who see the
/// conversation get a `typing` frame (through the bus, on every instance;
/// never the sender's own sockets), and the contact sees the business typing
/// (`TypingTarget::send`), at most every 5 s per agent and conversation.
async fn typing(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<TypingBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    let (user, role, keys, on, tenant) = (auth.user, auth.role, state.keys.clone(), body.on, auth.tenant.0);
    let target = state
        .db
        .tenant(auth.scope(), move |tc| {
            let target = messages::typing_target(tc, &keys, user, role, id)?;
            let name = crate::auth::users::display_name(tc.pg(), user)?;
            let typing = crate::realtime::LiveMsg::Typing {
                t: tenant,
                conv: target.conversation,
                ch: target.channel.id,
                u: user.0,
                name,
                on,
            };
            // Sent at commit, to every instance's hub.
            crate::realtime::bus::notify_live(tc.pg(), &typing)?;
            Ok::<_, crate::error::AppError>(target)
        })
        .await?;
    if state.typing_due(tenant, target.conversation, user.0, on) {
        target.send(&state.graph, on);
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThreadControlBody {
    action: String,
    /// Meta's app id, as text or a number.
    #[serde(default)]
    app_id: Value,
}

/// `{action: "take"}` takes the customer's thread from whichever app holds
/// it; `{action: "pass", app_id?}` passes it to another app (Meta's Page
/// Inbox unless named): `inbox::handover`. Meta is asked first; the
/// conversation changes only once it said yes.
async fn thread_control(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<ThreadControlBody>,
) -> AppResult<HttpResponse> {
    use crate::inbox::handover::{self, Request};
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    let ours = state.graph.app_id().to_string();
    let app = match &body.app_id {
        Value::Null => None,
        Value::String(a) => Some(a.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => return Err(AppError::invalid("invalid_app_id", "app_id is another app's Meta id (digits only)")),
    };
    let request = Request::parse(&body.action, app.as_deref(), &ours)?;
    let (user, role, keys) = (auth.user, auth.role, state.keys.clone());
    let target = state.db.tenant(auth.scope(), move |tc| handover::target(tc, &keys, user, role, id)).await?;
    let (account, contact) = (target.channel.external_id.as_str(), target.contact.as_str());
    let asked = match &request {
        Request::Take => state.graph.take_thread_control(account, &target.token, contact, "switchboard").await,
        Request::Pass(app) => {
            state.graph.pass_thread_control(account, &target.token, contact, app, "switchboard").await
        }
    };
    if let Err(e) = asked {
        let channel = target.channel.channel_id();
        return Err(crate::channels::connect::note_graph_error(&state, auth.tenant, channel, e).await.into());
    }
    let conversation = target.conversation;
    let view = state
        .tenant_with_events(auth.scope(), move |tc, log| handover::done(tc, log, conversation, &request, &ours))
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// `before` is the contract's name for this list's cursor; `cursor`, the
/// name every other list takes, is the same, so a client that pages every
/// list alike pages this one too.
#[derive(Deserialize)]
struct MessagesQuery {
    before: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

async fn list_messages(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    q: web::Query<MessagesQuery>,
) -> AppResult<HttpResponse> {
    let id = conversation_id(&path)?;
    let limit = parse_limit(q.limit.as_deref())?;
    fn given(c: &Option<String>) -> Option<&str> {
        c.as_deref().filter(|c| !c.is_empty())
    }
    let before = match (given(&q.before), given(&q.cursor)) {
        (Some(b), Some(c)) if b != c => {
            return Err(AppError::bad_request("invalid_cursor", "before and cursor are one thing: give one"));
        }
        (b, c) => b.or(c).map(decode_time_cursor).transpose()?,
    };
    let (user, role) = (auth.user, auth.role);
    let (items, next) = state
        .db
        .tenant(auth.scope(), move |tc| {
            let conv = messages::visible_conversation(tc, user, role, id)?;
            messages::list(tc, &conv, before, limit)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": next.map(|(at, id)| encode_time_cursor(at, id))})))
}

/// `GET /api/mentions`: the notes that mention the caller, newest first.
async fn list_mentions(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = q.parse()?;
    let (user, role) = (auth.user, auth.role);
    let items = state
        .db
        .tenant(auth.scope(), move |tc| crate::inbox::mentions::of(tc, user, role, page.after, page.limit))
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |m| m.message_id.0)))
}

#[derive(Deserialize)]
struct NotificationsQuery {
    unread: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/notifications?unread=true&limit=&cursor=`: the caller's
/// notifications (`inbox::notifications`), newest first, with how many are
/// unread.
async fn list_notifications(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<NotificationsQuery>,
) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let page = PageQuery { limit: q.limit, cursor: q.cursor }.parse()?;
    let unread_only = match q.unread.as_deref() {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(AppError::bad_request("invalid_query", "unread is true or false")),
    };
    let (user, role) = (auth.user, auth.role);
    let (items, unread) = state
        .db
        .tenant(auth.scope(), move |tc| {
            use crate::inbox::notifications::{list, unread_count};
            Ok::<_, AppError>((
                list(tc, user, role, unread_only, page.after, page.limit)?,
                unread_count(tc, user, role)?,
            ))
        })
        .await?;
    let page = Paged::new(items, page.limit, |n| n.id.0);
    Ok(HttpResponse::Ok().json(json!({"items": page.items, "next_cursor": page.next_cursor, "unread_count": unread})))
}

/// `POST /api/notifications/read` `{ids}` or `{all: true}`: how many it
/// marked, and how many stay unread.
async fn read_notifications(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<crate::inbox::notifications::ReadRequest>,
) -> AppResult<HttpResponse> {
    let which = body.into_inner().which()?;
    let (user, role) = (auth.user, auth.role);
    let (marked, unread) = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            use crate::inbox::notifications::{mark_read, unread_count};
            match mark_read(tc, log, user, role, which)? {
                (marked, Some(unread)) => Ok((marked, unread)),
                (marked, None) => Ok((marked, unread_count(tc, user, role)?)),
            }
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"marked": marked, "unread_count": unread})))
}

/// A saved view's id from the path or `?view=`; anything else names none.
fn saved_view_id(raw: &str) -> AppResult<i64> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| AppError::not_found("view"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewBody {
    name: String,
    #[serde(default)]
    filters: Map<String, Value>,
    /// `personal` (the default) or `team`, when made.
    visibility: Option<crate::inbox::Visibility>,
}

impl ViewBody {
    fn draft(self) -> crate::inbox::saved_views::Draft {
        crate::inbox::saved_views::Draft { name: self.name, filters: self.filters, visibility: self.visibility }
    }
}

/// `GET /api/views`: the team's saved views and the caller's own, by name
/// (`inbox::saved_views`).
async fn list_views(
    state: web::Data<AppState>,
    auth: AuthContext,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let user = auth.user;
    let items = state.db.tenant(auth.scope(), move |tc| crate::inbox::saved_views::list(tc, user)).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

async fn create_view(state: web::Data<AppState>, auth: AuthContext, body: Json<ViewBody>) -> AppResult<HttpResponse> {
    let (user, role, draft) = (auth.user, auth.role, body.into_inner().draft());
    let made =
        state.db.tenant(auth.scope(), move |tc| crate::inbox::saved_views::save(tc, user, role, None, &draft)).await?;
    Ok(HttpResponse::Created().json(made))
}

/// `PATCH /api/views/{id}` `{name, filters}`: the whole view again.
async fn update_view(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<ViewBody>,
) -> AppResult<HttpResponse> {
    let id = saved_view_id(&path)?;
    let (user, role, draft) = (auth.user, auth.role, body.into_inner().draft());
    let saved = state
        .db
        .tenant(auth.scope(), move |tc| crate::inbox::saved_views::save(tc, user, role, Some(id), &draft))
        .await?;
    Ok(HttpResponse::Ok().json(saved))
}

async fn delete_view(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = saved_view_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    state.db.tenant(auth.scope(), move |tc| crate::inbox::saved_views::delete(tc, user, role, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MacroBody {
    name: String,
    actions: Vec<crate::inbox::macros::Action>,
    /// `team` (the default) or `personal`, when made.
    visibility: Option<crate::inbox::Visibility>,
}

impl MacroBody {
    fn draft(self) -> crate::inbox::macros::Draft {
        crate::inbox::macros::Draft { name: self.name, actions: self.actions, visibility: self.visibility }
    }
}

/// A macro's id from the path; anything else names none.
fn macro_id(raw: &str) -> AppResult<i64> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| AppError::not_found("macro"))
}

/// `GET /api/macros`: the team's macros and the caller's own, by name
/// (`inbox::macros`).
async fn list_macros(
    state: web::Data<AppState>,
    auth: AuthContext,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let user = auth.user;
    let items = state.db.tenant(auth.scope(), move |tc| crate::inbox::macros::list(tc, user)).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// Who may keep which macro is the domain's to say (`macros::save`).
async fn create_macro(state: web::Data<AppState>, auth: AuthContext, body: Json<MacroBody>) -> AppResult<HttpResponse> {
    let (user, role, draft) = (auth.user, auth.role, body.into_inner().draft());
    let made = state.db.tenant(auth.scope(), move |tc| crate::inbox::macros::save(tc, user, role, None, draft)).await?;
    Ok(HttpResponse::Created().json(made))
}

/// `PATCH /api/macros/{id}` `{name, actions}`: the whole macro again.
async fn update_macro(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<MacroBody>,
) -> AppResult<HttpResponse> {
    let id = macro_id(&path)?;
    let (user, role, draft) = (auth.user, auth.role, body.into_inner().draft());
    let saved =
        state.db.tenant(auth.scope(), move |tc| crate::inbox::macros::save(tc, user, role, Some(id), draft)).await?;
    Ok(HttpResponse::Ok().json(saved))
}

async fn delete_macro(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = macro_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    state.db.tenant(auth.scope(), move |tc| crate::inbox::macros::delete(tc, user, role, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    client_id: Option<String>,
}

/// `POST /api/conversations/{id}/macros/{macro_id}` `{client_id?}` (the
/// body may be left out): runs the macro, all or nothing.
async fn run_macro(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let (conversation, id) = path.into_inner();
    let (conversation, id) = (conversation_id(&conversation)?, macro_id(&id)?);
    let b: RunBody =
        if body.iter().all(u8::is_ascii_whitespace) { RunBody::default() } else { super::json::read(&body)? };
    let (user, role) = (auth.user, auth.role);
    let online = state.online.of(auth.tenant);
    let ran = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            crate::inbox::macros::run(tc, log, user, role, conversation, id, b.client_id, &online)
        })
        .await?;
    if ran.queued {
        state.wake_sender.notify_one();
    }
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::Ok().json(ran))
}

#[derive(Deserialize)]
struct TranscriptQuery {
    tz: Option<String>,
    notes: Option<String>,
}

/// The conversation as a text file (`inbox::transcript`).
async fn transcript(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    q: web::Query<TranscriptQuery>,
) -> AppResult<HttpResponse> {
    let id = conversation_id(&path)?;
    let opts =
        crate::inbox::transcript::Options::parse(q.tz.as_deref(), q.notes.as_deref()).map_err(AppError::in_query)?;
    let (user, role) = (auth.user, auth.role);
    let t = state.db.tenant(auth.scope(), move |tc| crate::inbox::transcript::render(tc, user, role, id, opts)).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{}\"", t.filename)))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(t.text))
}

/// One attachment of a message. Messenger and Instagram media live on
/// Meta's CDN, which serves them to whoever has the URL until it expires:
/// the copy made of it when the message came (`inbox::media_copies`), else
/// a redirect there.
/// WhatsApp media are served only to the channel's token: fetched from Meta
/// and passed through as they come, never stored (`inbox::media`).
/// A file an agent sent is served from where it is kept (`inbox::uploads`).
/// Served as a download in a sandbox unless it is an image, video or sound
/// file: a customer's file must not run as a page of this origin. A `Range`
/// goes on to Meta and its part comes back (206), so players can seek. A
/// `HEAD` of a WhatsApp media gives its type and length from Meta's lookup,
/// downloading nothing.
async fn attachment(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    q: web::Query<LinkQuery>,
    req: actix_web::HttpRequest,
) -> AppResult<HttpResponse> {
    use actix_web::http::header;
    use actix_web::FromRequest;
    use futures_util::TryStreamExt;
    let (id, index) = attachment_path(&path)?;
    // A HEAD fetches nothing and is never partial: range requests are
    // GET's alone (RFC 9110 §14.2).
    let head = req.method() == actix_web::http::Method::HEAD;
    // Only a plain byte range is honoured (it is the one Meta serves).
    let range = req
        .headers()
        .get(header::RANGE)
        .filter(|_| !head)
        .and_then(|v| v.to_str().ok())
        .filter(|r| r.len() <= 100 && r.starts_with("bytes="))
        .map(str::to_string);
    let (tenant, source) = match q.link.as_deref() {
        // A link made for this attachment stands for the Bearer token.
        Some(link) => {
            let claims: LinkClaims = crate::signed::open(&state.link_key, link).map_err(|_| bad_link())?;
            if (claims.m, claims.i) != (id.0, index) || claims.e < Utc::now().timestamp() {
                return Err(bad_link());
            }
            let tenant = crate::ids::TenantId(claims.t);
            let scope = crate::db::TenantScope::system(tenant);
            let range = range.clone();
            let copy = state.db.tenant(scope, move |tc| source_and_copy(tc, None, id, index, range.as_deref(), head));
            (tenant, copy.await?)
        }
        None => {
            let auth = AuthContext::extract(&req).await?;
            let viewer = Some((auth.user, auth.role));
            let range = range.clone();
            let source = state
                .db
                .tenant(auth.scope(), move |tc| source_and_copy(tc, viewer, id, index, range.as_deref(), head))
                .await?;
            (auth.tenant, source)
        }
    };
    let (media_id, filename, channel) = match source {
        (messages::AttachmentSource::Url(_), Some(copy)) => return copy_response(copy, None, head),
        (messages::AttachmentSource::Uploaded { filename }, Some(copy)) => {
            return copy_response(copy, filename.as_deref(), head)
        }
        (messages::AttachmentSource::Uploaded { .. }, None) => {
            // Stored with its message in one transaction: only a purge between the reads.
            return Err(AppError::not_found("attachment"));
        }
        (messages::AttachmentSource::Url(url), None) => {
            // No copy (missed as the message came): made now, while Meta's
            // URL may still work, for the next time.
            let index = i32::try_from(index).unwrap_or(i32::MAX);
            let copy = crate::inbox::media_copies::MediaCopy { tenant, message_id: id.0, index, url: url.clone() };
            if state.cdn_hosts.allows(&url) && state.copy_retries.due(copy.key(), std::time::Instant::now()) {
                let _ = state.media_copies.try_send(copy);
            }
            return Ok(HttpResponse::Found().insert_header((header::LOCATION, url)).finish());
        }
        (messages::AttachmentSource::Media { media_id, filename, channel }, _) => (media_id, filename, channel),
    };
    if head {
        let crate::inbox::media::Described { mime, size } =
            crate::inbox::media::describe(&state, tenant, &channel, &media_id).await?;
        let mut res = HttpResponse::Ok();
        media_headers(&mut res, mime, filename.as_deref());
        return Ok(no_body(&mut res, size));
    }
    let crate::inbox::media::Opened { stream: download, mime } =
        crate::inbox::media::open(&state, tenant, &channel, &media_id, range.as_deref()).await?;
    let mut res = match download.status {
        206 => HttpResponse::PartialContent(),
        _ => HttpResponse::Ok(),
    };
    if let (206, Some(part)) = (download.status, &download.content_range) {
        res.insert_header((header::CONTENT_RANGE, part.as_str()));
    }
    if download.ranges {
        res.insert_header((header::ACCEPT_RANGES, "bytes"));
    }
    media_headers(&mut res, mime, filename.as_deref());
    if let Some(length) = download.length {
        res.no_chunking(length);
    }
    Ok(res.streaming(download.body.map_err(|e| actix_web::error::ErrorBadGateway(e.to_string()))))
}

/// A customer's file's type, and the guards it is served with: shown
/// inline only if an image, video or sound, `nosniff`, sandboxed.
fn media_headers(res: &mut actix_web::HttpResponseBuilder, mime: String, filename: Option<&str>) {
    use actix_web::http::header;
    let shown_inline = ["image/", "video/", "audio/"].iter().any(|p| mime.starts_with(p));
    res.content_type(mime)
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox"))
        .insert_header(disposition(shown_inline, filename));
}

/// Where attachment `index` of message `id` comes from, and for one on
/// Meta's CDN the copy kept of it (the part `range` names; for a `HEAD`,
/// its type and size alone), in one unit of work.
fn source_and_copy(
    tc: &mut crate::db::TenantConn<'_>,
    viewer: Option<(crate::ids::UserId, crate::auth::Role)>,
    id: MessageId,
    index: usize,
    range: Option<&str>,
    head: bool,
) -> AppResult<(messages::AttachmentSource, Option<crate::inbox::media_copies::StoredCopy>)> {
    let source = messages::attachment_source(tc, viewer, id, index)?;
    let copy = match source {
        messages::AttachmentSource::Url(_) | messages::AttachmentSource::Uploaded { .. } if head => {
            crate::inbox::media_copies::describe(tc, id.0, index)?
        }
        messages::AttachmentSource::Url(_) | messages::AttachmentSource::Uploaded { .. } => {
            crate::inbox::media_copies::find(tc, id.0, index, range)?
        }
        messages::AttachmentSource::Media { .. } => None,
    };
    Ok((source, copy))
}

/// A copy of a CDN media, whole or the one part a `Range` asked for (206;
/// 416 for a part it does not have), with the same guards as a WhatsApp
/// media ([`media_headers`]); for a `HEAD`, its length without its bytes.
fn copy_response(
    copy: crate::inbox::media_copies::StoredCopy,
    filename: Option<&str>,
    head: bool,
) -> AppResult<HttpResponse> {
    use actix_web::http::header;
    let crate::inbox::media_copies::StoredCopy { mime, len, part, bytes } = copy;
    let mut res = match part {
        Some(Err(())) => return Err(AppError::range_not_satisfiable(Some(len as u64))),
        Some(Ok((start, end))) => {
            let mut res = HttpResponse::PartialContent();
            res.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
            res
        }
        None => HttpResponse::Ok(),
    };
    res.insert_header((header::ACCEPT_RANGES, "bytes"));
    media_headers(&mut res, mime, filename);
    if head {
        return Ok(no_body(&mut res, Some(len as u64)));
    }
    Ok(res.body(bytes))
}

/// A `HEAD`'s answer: the headers, and the length the `GET`'s body would
/// have where it is known (as a stream, so that actix keeps the length
/// said rather than the empty body's; a `HEAD`'s body is never sent).
fn no_body(res: &mut actix_web::HttpResponseBuilder, length: Option<u64>) -> HttpResponse {
    if let Some(length) = length {
        res.no_chunking(length);
    }
    res.streaming(futures_util::stream::empty::<Result<web::Bytes, actix_web::Error>>())
}

#[derive(Deserialize)]
struct LinkQuery {
    link: Option<String>,
}

/// What a media link says: tenant, message, attachment, and until when.
#[derive(serde::Serialize, Deserialize)]
struct LinkClaims {
    t: i64,
    m: i64,
    i: usize,
    e: i64,
}

/// How long a media link works: long enough to start a video and seek in
/// it, short enough that one copied elsewhere soon stops working.
const LINK_SECS: i64 = 300;

fn bad_link() -> AppError {
    AppError::forbidden("invalid_link", "this link is not one this server made for this attachment, or it expired")
}

fn attachment_path(path: &(String, String)) -> AppResult<(MessageId, usize)> {
    let id = message_id(&path.0)?;
    let index: usize = path.1.parse().map_err(|_| AppError::not_found("attachment"))?;
    Ok((id, index))
}

/// A link to one attachment that works without the Bearer token for five
/// minutes, for what cannot send it: a page's `<video src>` or `<img src>`
/// (a blob would make a long video download whole before it plays).
/// Whoever has the link may fetch that attachment until it expires, as with
/// Meta's own CDN URLs; only who may see the message gets one.
async fn attachment_link(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, index) = attachment_path(&path)?;
    let viewer = Some((auth.user, auth.role));
    state.db.tenant(auth.scope(), move |tc| messages::attachment_source(tc, viewer, id, index)).await?;
    let claims = LinkClaims { t: auth.tenant.0, m: id.0, i: index, e: Utc::now().timestamp() + LINK_SECS };
    let link = crate::signed::sign(&state.link_key, &claims);
    let url = format!("{}?link={link}", crate::inbox::views::attachment_path(id.0, index));
    Ok(HttpResponse::Ok().json(json!({"url": url, "expires_in": LINK_SECS})))
}

/// `inline` or `attachment`, with the customer's file name when there is
/// one: only its last path segment, without control characters, and
/// outside ASCII also as RFC 5987 UTF-8 (with an ASCII stand-in first).
fn disposition(inline: bool, filename: Option<&str>) -> actix_web::http::header::ContentDisposition {
    use actix_web::http::header::{Charset, ContentDisposition, DispositionParam, DispositionType, ExtendedValue};
    let mut parameters = Vec::new();
    let name: Option<String> = filename
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .map(|n| n.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|n| !n.trim().is_empty());
    if let Some(name) = name {
        if name.is_ascii() {
            parameters.push(DispositionParam::Filename(name));
        } else {
            let ascii: String = name.chars().map(|c| if c.is_ascii() { c } else { '_' }).collect();
            parameters.push(DispositionParam::Filename(ascii));
            parameters.push(DispositionParam::FilenameExt(ExtendedValue {
                charset: Charset::Ext("UTF-8".into()),
                language_tag: None,
                value: name.into_bytes(),
            }));
        }
    }
    let disposition = if inline { DispositionType::Inline } else { DispositionType::Attachment };
    ContentDisposition { disposition, parameters }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    #[serde(default)]
    text: Option<String>,
    /// A WhatsApp template instead of text (`inbox::templates`).
    #[serde(default)]
    template: Option<crate::inbox::templates::Choice>,
    /// A note for the team, never sent (`messages::create_note`).
    #[serde(default)]
    private: bool,
    #[serde(default)]
    client_id: Option<String>,
    /// The id of the conversation's message this answers (WhatsApp quotes it).
    #[serde(default)]
    reply_to: Option<String>,
    /// A note's members to call in (`inbox::mentions`).
    #[serde(default)]
    mentions: Option<Vec<String>>,
    /// A note's teams to call in (their members).
    #[serde(default)]
    mention_teams: Option<Vec<String>>,
    /// Answers the customer taps (`inbox::choices`), with `text`.
    #[serde(default)]
    choices: Option<Vec<String>>,
    /// A WhatsApp list's button, for more than three choices.
    #[serde(default)]
    choices_button: Option<String>,
    /// Whether the text ends with the agent's signature; left out: as the
    /// channel's `sign_replies` says.
    #[serde(default)]
    sign: Option<bool>,
}

/// A template goes as Meta approved it, word for word.
fn refuse_signed_template(sign: Option<bool>) -> AppResult<()> {
    match sign {
        Some(true) => {
            Err(AppError::invalid("invalid_body", "a template goes as Meta approved it: it takes no signature"))
        }
        _ => Ok(()),
    }
}

/// Ids written comma-separated in a form's part, blanks skipped.
fn id_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|i| !i.is_empty()).map(str::to_string).collect()
}

/// A `reply_to` as given: a message id, else 422 `invalid_reply_to`.
fn reply_to(raw: Option<&str>) -> AppResult<Option<MessageId>> {
    raw.map(|r| {
        MessageId::parse(r).ok_or_else(|| AppError::invalid("invalid_reply_to", "reply_to must be a message's id"))
    })
    .transpose()
}

/// `POST …/messages`: JSON (text, a template or a note), or
/// `multipart/form-data` with a file (`inbox::uploads`).
async fn send(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    use actix_web::FromRequest;
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    if is_multipart(&req) {
        return Ok(send_file(state, auth, id, &req, payload).await?);
    }
    let body = Json::<SendBody>::from_request(&req, &mut payload.into_inner()).await?;
    Ok(send_json(state, auth, id, body.into_inner()).await?)
}

async fn send_json(
    state: web::Data<AppState>,
    auth: AuthContext,
    id: ConversationId,
    b: SendBody,
) -> AppResult<HttpResponse> {
    let (user, role) = (auth.user, auth.role);
    if b.choices.is_none() && b.choices_button.is_some() {
        return Err(AppError::invalid("invalid_body", "choices_button goes with choices"));
    }
    if b.private {
        let plain = b.template.is_none() && b.reply_to.is_none() && b.choices.is_none() && b.sign.is_none();
        let Some(text) = b.text.filter(|_| plain) else {
            return Err(AppError::invalid(
                "invalid_body",
                "a private note is text; it takes no template, reply_to, choices nor sign",
            ));
        };
        let note = messages::Note {
            text: Some(text),
            file: None,
            client_id: b.client_id,
            mentions: Mentions { members: b.mentions.unwrap_or_default(), teams: b.mention_teams.unwrap_or_default() },
        };
        let (view, _) = state
            .tenant_with_events(auth.scope(), move |tc, log| messages::create_note(tc, log, user, role, id, note))
            .await?;
        return Ok(HttpResponse::Created().json(view));
    }
    if b.mentions.is_some() || b.mention_teams.is_some() {
        return Err(AppError::invalid("invalid_body", "mentions are for private notes"));
    }
    if b.template.is_some() {
        refuse_signed_template(b.sign)?;
    }
    let opts =
        messages::ReplyOptions { client_id: b.client_id, reply_to: reply_to(b.reply_to.as_deref())?, sign: b.sign };
    let (view, created) = match (b.text, b.template) {
        (Some(text), None) if b.choices.is_some() => {
            let (options, button) = (b.choices.unwrap_or_default(), b.choices_button);
            state
                .tenant_with_events(auth.scope(), move |tc, log| {
                    messages::create_choices_reply(tc, log, user, role, id, text, options, button, opts)
                })
                .await?
        }
        (_, Some(_)) if b.choices.is_some() => {
            return Err(AppError::invalid("invalid_body", "choices go with text, not with a template"));
        }
        (Some(text), None) => {
            state
                .tenant_with_events(auth.scope(), move |tc, log| {
                    messages::create_reply(tc, log, user, role, id, text, opts)
                })
                .await?
        }
        (None, Some(choice)) => {
            crate::inbox::templates::send(&state, auth.scope(), user, role, id, choice, opts, None).await?
        }
        (None, None) => return Err(AppError::invalid("invalid_body", "missing field `text`")),
        (Some(_), Some(_)) => {
            return Err(AppError::invalid("invalid_body", "send text or a template, not both"));
        }
    };
    if created {
        state.wake_sender.notify_one();
    }
    Ok(HttpResponse::Accepted().json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    channel_id: crate::channels::ChannelId,
    phone_number: String,
    #[serde(default)]
    template: Option<crate::inbox::templates::Choice>,
    #[serde(default)]
    client_id: Option<String>,
    /// Named only to say why it is refused (`inbox::outreach`).
    #[serde(default)]
    text: Option<Value>,
}

/// `POST /api/conversations`: writing first to a WhatsApp number, with a
/// template (`inbox::outreach`); JSON, or `multipart/form-data` with the
/// template's header file and `channel_id` and `phone_number` parts.
async fn start(
    state: web::Data<AppState>,
    auth: AuthContext,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    use crate::inbox::outreach;
    use actix_web::FromRequest;
    auth.require(Role::Agent)?;
    let template_required = || {
        AppError::invalid(
            "template_required",
            "a business writes first with an approved template (`template`); once the customer writes, reply in the conversation",
        )
    };
    let (channel, number, choice, opts, file) = if is_multipart(&req) {
        let reading = state.uploads.clone().acquire_owned().await;
        let form = read_file_form(&req, payload, &["channel_id", "phone_number"]).await;
        drop(reading);
        let mut form = form?;
        if form.private || form.mentions.is_some() || form.text.is_some() {
            return Err(
                AppError::invalid("invalid_body", "a conversation starts with a template and its file alone").into()
            );
        }
        let Some(choice) = form.template.take() else { return Err(template_required().into()) };
        refuse_signed_template(form.opts.sign)?;
        let part = |name: &str| {
            form.others
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| AppError::bad_request("invalid_body", format!("missing part `{name}`")))
        };
        let channel = crate::channels::ChannelId::parse(part("channel_id")?.trim())
            .ok_or_else(|| AppError::not_found("channel"))?;
        let number = outreach::Number::parse(&part("phone_number")?)?;
        (channel, number, choice, form.opts, Some(form.upload))
    } else {
        let b = Json::<StartBody>::from_request(&req, &mut payload.into_inner()).await?.into_inner();
        let Some(choice) = b.template.filter(|_| b.text.is_none()) else { return Err(template_required().into()) };
        let number = outreach::Number::parse(&b.phone_number)?;
        (
            b.channel_id,
            number,
            choice,
            messages::ReplyOptions { client_id: b.client_id, reply_to: None, sign: None },
            None,
        )
    };
    let (user, role) = (auth.user, auth.role);
    let (started, queued) =
        outreach::start(&state, auth.scope(), user, role, channel, number, choice, opts, file).await?;
    if queued {
        state.wake_sender.notify_one();
    }
    Ok(HttpResponse::Accepted().json(started))
}

fn unreadable(e: actix_multipart::MultipartError) -> AppError {
    AppError::bad_request("invalid_body", format!("the multipart body could not be read: {e}"))
}

/// A form part's bytes, or `None` once they pass `most` (the rest is not
/// read).
async fn read_part(field: &mut actix_multipart::Field, most: usize) -> AppResult<Option<Vec<u8>>> {
    use futures_util::TryStreamExt;
    let mut bytes = Vec::new();
    while let Some(chunk) = field.try_next().await.map_err(unreadable)? {
        if bytes.len() + chunk.len() > most {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

/// Whether the request's body is `multipart/form-data`.
fn is_multipart(req: &actix_web::HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// A file and what may come with it, read from a `multipart/form-data` body.
struct FileForm {
    upload: crate::inbox::uploads::Upload,
    text: Option<String>,
    /// A template whose media header the file is.
    template: Option<crate::inbox::templates::Choice>,
    /// A note for the team, with the file (`private` part `true`).
    private: bool,
    /// Whom a note calls in (`mentions` and `mention_teams` parts: ids,
    /// comma-separated), when either part is there.
    mentions: Option<Mentions>,
    opts: messages::ReplyOptions,
    /// The text parts the caller named besides these, by name.
    others: Vec<(String, String)>,
}

async fn send_file(
    state: web::Data<AppState>,
    auth: AuthContext,
    id: ConversationId,
    req: &actix_web::HttpRequest,
    payload: web::Payload,
) -> AppResult<HttpResponse> {
    let (user, role) = (auth.user, auth.role);
    // Memory stays bounded however many agents upload at once: the others wait.
    let reading = state.uploads.clone().acquire_owned().await;
    let form = read_file_form(req, payload, &[]).await;
    drop(reading);
    let FileForm { upload, text, template, private, mentions, opts, .. } = form?;
    if private {
        if template.is_some() || opts.reply_to.is_some() || opts.sign.is_some() {
            return Err(AppError::invalid("invalid_body", "a private note takes no template, reply_to nor sign"));
        }
        let mentions = mentions.unwrap_or_default();
        let (view, _) = state
            .tenant_with_events(auth.scope(), move |tc, log| {
                let note = messages::Note { text, file: Some(upload), client_id: opts.client_id, mentions };
                messages::create_note(tc, log, user, role, id, note)
            })
            .await?;
        return Ok(HttpResponse::Created().json(view));
    }
    if mentions.is_some() {
        return Err(AppError::invalid("invalid_body", "mentions are for private notes"));
    }
    if template.is_some() {
        refuse_signed_template(opts.sign)?;
    }
    let (view, created) = match template {
        Some(_) if text.is_some() => {
            return Err(AppError::invalid("invalid_body", "a template's text is the template's: send no text with it"));
        }
        Some(choice) => {
            crate::inbox::templates::send(&state, auth.scope(), user, role, id, choice, opts, Some(upload)).await?
        }
        None => {
            state
                .tenant_with_events(auth.scope(), move |tc, log| {
                    messages::create_file_reply(tc, log, user, role, id, upload, text, opts)
                })
                .await?
        }
    };
    if created {
        state.wake_sender.notify_one();
    }
    Ok(HttpResponse::Accepted().json(view))
}

/// A form's part that says yes or no.
fn form_bool(name: &str, text: &str) -> AppResult<bool> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(AppError::invalid("invalid_body", format!("the part `{name}` is true or false"))),
    }
}

/// The parts a message's form may have, once each.
const FORM_PARTS: [&str; 9] =
    ["file", "text", "client_id", "reply_to", "template", "private", "sign", "mentions", "mention_teams"];

/// Longest `text` and `client_id` parts read (their own limits are checked after).
const MOST_FORM_TEXT_BYTES: usize = 16 * 1024;

/// Reads `file` (required, once), `text`, `client_id`, `reply_to` and
/// `template` (a template's JSON, whose media header the file is; optional,
/// once each), and the text parts named in `also` (once each); any other
/// part, or one repeated, is refused. A `text` left empty (as a browser's
/// form sends an untouched field) is no caption.
async fn read_file_form(req: &actix_web::HttpRequest, payload: web::Payload, also: &[&str]) -> AppResult<FileForm> {
    use crate::inbox::uploads::{Upload, MOST_BYTES};
    use futures_util::TryStreamExt;
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let (mut file, mut text, mut client_id, mut quoted, mut template) = (None, None, None, None, None);
    let (mut private, mut sign, mut others) = (None, None, Vec::<(String, String)>::new());
    let (mut mentions, mut mention_teams): (Option<Vec<String>>, Option<Vec<String>>) = (None, None);
    while let Some(mut field) = form.try_next().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_string();
        let most = if name == "file" { MOST_BYTES } else { MOST_FORM_TEXT_BYTES };
        let Some(bytes) = read_part(&mut field, most).await? else {
            return Err(match name.as_str() {
                "file" => AppError::new(
                    crate::error::ErrorKind::PayloadTooLarge,
                    "file_too_large",
                    format!("a file must be at most {} MB", MOST_BYTES / (1024 * 1024)),
                ),
                _ => AppError::bad_request("invalid_body", format!("the part `{name}` is too long")),
            });
        };
        let as_text = |bytes: Vec<u8>| {
            String::from_utf8(bytes)
                .map_err(|_| AppError::bad_request("invalid_body", format!("the part `{name}` is not UTF-8 text")))
        };
        match name.as_str() {
            "file" if file.is_none() => {
                let declared = field.content_type().map(|m| m.essence_str().to_string());
                let disposition = field.content_disposition();
                let filename = disposition
                    .and_then(|d| d.get_filename_ext())
                    .map(|ext| String::from_utf8_lossy(&ext.value).into_owned())
                    .or_else(|| disposition.and_then(|d| d.get_filename()).map(str::to_string));
                file = Some(Upload::new(bytes, declared.as_deref(), filename.as_deref()));
            }
            "text" if text.is_none() => text = Some(as_text(bytes)?),
            "client_id" if client_id.is_none() => client_id = Some(as_text(bytes)?),
            "reply_to" if quoted.is_none() => quoted = Some(as_text(bytes)?),
            "template" if template.is_none() => {
                let choice = serde_json::from_slice::<crate::inbox::templates::Choice>(&bytes).map_err(|e| {
                    AppError::invalid("invalid_body", format!("the part `template` is not a template: {e}"))
                })?;
                template = Some(choice);
            }
            "private" if private.is_none() => private = Some(form_bool(&name, &as_text(bytes)?)?),
            "sign" if sign.is_none() => sign = Some(form_bool(&name, &as_text(bytes)?)?),
            "mentions" if mentions.is_none() => mentions = Some(id_list(&as_text(bytes)?)),
            "mention_teams" if mention_teams.is_none() => mention_teams = Some(id_list(&as_text(bytes)?)),
            other if also.contains(&other) && !others.iter().any(|(n, _)| n == other) => {
                let value = as_text(bytes)?;
                others.push((name, value));
            }
            known if FORM_PARTS.contains(&known) => {
                return Err(AppError::bad_request("invalid_body", format!("the part `{name}` is given twice")));
            }
            other if also.contains(&other) => {
                return Err(AppError::bad_request("invalid_body", format!("the part `{name}` is given twice")));
            }
            _ => {
                let mut expected = FORM_PARTS.to_vec();
                expected.extend_from_slice(also);
                let expected = expected.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ");
                return Err(AppError::bad_request(
                    "invalid_body",
                    format!("unknown part `{name}`: expected {expected}"),
                ));
            }
        }
    }
    let Some(upload) = file else {
        return Err(AppError::bad_request("invalid_body", "missing part `file`"));
    };
    let opts = messages::ReplyOptions { client_id, reply_to: reply_to(quoted.as_deref())?, sign };
    let private = private.unwrap_or(false);
    let mentions = (mentions.is_some() || mention_teams.is_some())
        .then(|| Mentions { members: mentions.unwrap_or_default(), teams: mention_teams.unwrap_or_default() });
    Ok(FileForm { upload, text: text.filter(|t| !t.trim().is_empty()), template, private, mentions, opts, others })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    text: String,
    /// The members the note calls in now (`inbox::mentions`), and the
    /// teams; both left out, they stay.
    mentions: Option<Vec<String>>,
    mention_teams: Option<Vec<String>>,
}

/// A private note rewritten by its author (`messages::edit_note`).
async fn edit_note(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<NoteBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = message_id(&path)?;
    let NoteBody { text, mentions, mention_teams } = body.into_inner();
    let mentions = (mentions.is_some() || mention_teams.is_some())
        .then(|| Mentions { members: mentions.unwrap_or_default(), teams: mention_teams.unwrap_or_default() });
    let (user, role) = (auth.user, auth.role);
    let view = state
        .tenant_with_events(auth.scope(), move |tc, log| messages::edit_note(tc, log, user, role, id, text, mentions))
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionBody {
    emoji: String,
}

/// The business reacts to a customer's message (`messages::react`).
async fn react(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<ReactionBody>,
) -> AppResult<HttpResponse> {
    set_reaction(state, auth, &path, Some(body.into_inner().emoji)).await
}

/// The business takes its reaction back.
async fn unreact(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    set_reaction(state, auth, &path, None).await
}

async fn set_reaction(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: &str,
    emoji: Option<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = message_id(path)?;
    let (user, role) = (auth.user, auth.role);
    let view =
        state.tenant_with_events(auth.scope(), move |tc, log| messages::react(tc, log, user, role, id, emoji)).await?;
    state.wake_sender.notify_one();
    Ok(HttpResponse::Ok().json(view))
}

/// A failed reply sent again (`messages::retry`): 202 with it `pending`.
async fn retry_message(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = message_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let view = state.tenant_with_events(auth.scope(), move |tc, log| messages::retry(tc, log, user, role, id)).await?;
    state.wake_sender.notify_one();
    Ok(HttpResponse::Accepted().json(view))
}

/// A private note deleted by its author or an admin (`messages::delete_note`).
async fn delete_note(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = message_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    state.tenant_with_events(auth.scope(), move |tc, log| messages::delete_note(tc, log, user, role, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The labels in use on the conversations the caller may see, most used
/// first (at most 200; `next_cursor` is always null).
async fn list_labels(
    state: web::Data<AppState>,
    auth: AuthContext,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let (user, role) = (auth.user, auth.role);
    let items = state.db.tenant(auth.scope(), move |tc| conversations::labels_in_use(tc, user, role)).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// The contacts list's filters, shared by the list and its export.
#[derive(Deserialize)]
struct ContactsFilterQuery {
    channel_id: Option<String>,
    q: Option<String>,
    /// `true`: only blocked contacts; `false`: only the others.
    blocked: Option<String>,
    /// `key` (has it) or `key:value` (`inbox::attributes::wanted`).
    attribute: Option<String>,
}

/// [`ContactsFilterQuery`] checked as far as it can be before the
/// database; the attribute is read against the definitions in [`Self::with`].
struct ContactsFilterChecked {
    channel: Option<crate::channels::ChannelId>,
    q: Option<String>,
    blocked: Option<bool>,
    attribute: Option<String>,
}

impl ContactsFilterQuery {
    fn checked(self) -> AppResult<ContactsFilterChecked> {
        let blocked = match self.blocked.as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(AppError::bad_request("invalid_blocked", "blocked is true or false")),
        };
        let channel = super::channel_param(self.channel_id.as_deref())?;
        let q = super::search_text(self.q)?;
        Ok(ContactsFilterChecked { channel, q, blocked, attribute: self.attribute })
    }
}

impl ContactsFilterChecked {
    /// `f` with the filter, its attribute read in `tc` (400
    /// `invalid_attribute`, a refusal of the query: [`AppError::in_query`]).
    fn with<T>(
        &self,
        tc: &mut crate::db::TenantConn<'_>,
        f: impl FnOnce(&mut crate::db::TenantConn<'_>, &contacts::ContactFilter<'_>) -> AppResult<T>,
    ) -> AppResult<T> {
        let attribute = self
            .attribute
            .as_deref()
            .map(|raw| crate::inbox::attributes::wanted(tc, raw))
            .transpose()
            .map_err(AppError::in_query)?;
        let filter = contacts::ContactFilter {
            channel: self.channel,
            q: self.q.as_deref(),
            blocked: self.blocked,
            attribute: attribute.as_ref(),
        };
        f(tc, &filter)
    }
}

#[derive(Deserialize)]
struct ContactsQuery {
    #[serde(flatten)]
    filter: ContactsFilterQuery,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_contacts(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<ContactsQuery>,
) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let page = PageQuery { limit: q.limit, cursor: q.cursor }.parse()?;
    let filter = q.filter.checked()?;
    let (user, role) = (auth.user, auth.role);
    let (items, stale) = state
        .db
        .tenant(auth.scope(), move |tc| {
            let items = filter.with(tc, |tc, f| contacts::search(tc, user, role, f, page.after, page.limit))?;
            let ids: Vec<i64> = items.iter().map(|c| c.id.0).collect();
            Ok::<_, AppError>((items, contacts::stale_profiles(tc, &ids, Utc::now())?))
        })
        .await?;
    crate::inbox::sender::refresh_stale_profiles(&state, stale);
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |c| c.id.0)))
}

/// `GET /api/contacts.csv` (admins): the contacts the list's filters give,
/// as a spreadsheet (`inbox::contact_export`).
async fn export_contacts(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<ContactsFilterQuery>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let filter = q.into_inner().checked()?;
    let user = auth.user;
    let (csv, _) = state
        .db
        .tenant(auth.scope(), move |tc| filter.with(tc, |tc, f| crate::inbox::contact_export::export(tc, user, f)))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("Content-Disposition", "attachment; filename=\"contacts.csv\""))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(csv))
}

#[derive(Deserialize)]
struct ImportQuery {
    /// The channel of rows without a `channel_id` cell.
    channel_id: Option<String>,
    dry_run: Option<String>,
}

/// `POST /api/contacts/import` (admins): contacts from a CSV, all or
/// nothing (`inbox::contact_import`). The CSV is the body, or the `file`
/// part of a `multipart/form-data` form (a page's file input), which may
/// carry `channel_id` and `dry_run` as parts instead of the query.
async fn import_contacts(
    state: web::Data<AppState>,
    auth: AuthContext,
    req: actix_web::HttpRequest,
    q: web::Query<ImportQuery>,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    use actix_web::FromRequest;
    auth.require(Role::Admin)?;
    let mut q = q.into_inner();
    let body = if is_multipart(&req) {
        let reading = state.uploads.clone().acquire_owned().await;
        let form = read_import_form(&req, payload, &mut q).await;
        drop(reading);
        form?
    } else {
        web::Bytes::from_request(&req, &mut payload.into_inner()).await?
    };
    let channel = super::channel_param(q.channel_id.as_deref())?;
    let dry_run = match q.dry_run.as_deref().map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        // A query's or a form's value, not JSON: 400 (API.md).
        Some(_) => return Err(AppError::bad_request("invalid_dry_run", "dry_run is true or false").into()),
    };
    let user = auth.user;
    let imported = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            crate::inbox::contact_import::import(tc, log, user, channel, &body, dry_run)
        })
        .await?;
    Ok(HttpResponse::Ok().json(imported))
}

/// The CSV of an import form (its `file` part), its `channel_id` and
/// `dry_run` parts put in `q` (each given once, in the query or the form).
async fn read_import_form(
    req: &actix_web::HttpRequest,
    payload: web::Payload,
    q: &mut ImportQuery,
) -> AppResult<web::Bytes> {
    use crate::inbox::contact_import::MOST_BYTES;
    use futures_util::TryStreamExt;
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut file = None;
    while let Some(mut field) = form.try_next().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_string();
        let (most, slot) = match name.as_str() {
            "file" if file.is_none() => (MOST_BYTES, None),
            "channel_id" if q.channel_id.is_none() => (MOST_FORM_TEXT_BYTES, Some(&mut q.channel_id)),
            "dry_run" if q.dry_run.is_none() => (MOST_FORM_TEXT_BYTES, Some(&mut q.dry_run)),
            "file" | "channel_id" | "dry_run" => {
                return Err(AppError::bad_request(
                    "invalid_body",
                    format!("`{name}` is given twice (the form's parts and the query count alike)"),
                ))
            }
            _ => {
                return Err(AppError::bad_request(
                    "invalid_body",
                    format!("unknown part `{name}`: expected `file`, `channel_id`, `dry_run`"),
                ))
            }
        };
        let Some(bytes) = read_part(&mut field, most).await? else {
            return Err(match slot {
                None => AppError::new(
                    crate::error::ErrorKind::PayloadTooLarge,
                    "payload_too_large",
                    format!("an import's file is at most {} MiB", MOST_BYTES / (1024 * 1024)),
                ),
                Some(_) => AppError::bad_request("invalid_body", format!("the part `{name}` is too long")),
            });
        };
        match slot {
            None => file = Some(web::Bytes::from(bytes)),
            Some(slot) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    AppError::bad_request("invalid_body", format!("the part `{name}` is not UTF-8 text"))
                })?;
                *slot = Some(text);
            }
        }
    }
    file.ok_or_else(|| AppError::bad_request("invalid_body", "missing part `file`: the CSV"))
}

/// One contact, with what the team saved about them.
async fn get_contact(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = contact_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let (item, stale) = state
        .db
        .tenant(auth.scope(), move |tc| {
            let item = contacts::get(tc, user, role, id)?;
            let page = contact_links::page(tc, user, role, item)?;
            Ok::<_, AppError>((page, contacts::stale_profiles(tc, &[id.0], Utc::now())?))
        })
        .await?;
    crate::inbox::sender::refresh_stale_profiles(&state, stale);
    Ok(HttpResponse::Ok().json(item))
}

/// The team names a contact or keeps what it knows of them
/// (`contacts::update`): any of `name`, `email`, `phone`, `notes`, each a
/// string or `null`, `blocked`, true or false, and `attributes`, values by
/// key (`inbox::attributes`).
async fn update_contact(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<Map<String, Value>>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = contact_id(&path)?;
    let body = body.into_inner();
    const FIELDS: [&str; 6] = ["name", "email", "phone", "notes", "blocked", "attributes"];
    if let Some(other) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(AppError::invalid(
            "invalid_body",
            format!("unknown field `{other}`, expected `name`, `email`, `phone`, `notes`, `blocked` or `attributes`"),
        ));
    }
    if body.is_empty() {
        return Err(AppError::invalid(
            "invalid_body",
            "give at least one of `name`, `email`, `phone`, `notes`, `blocked`, `attributes`",
        ));
    }
    let attributes = match body.get("attributes") {
        None => Map::new(),
        Some(Value::Object(given)) => given.clone(),
        Some(_) => {
            return Err(AppError::invalid("invalid_body", "`attributes` is an object of values by key"));
        }
    };
    let blocked = match body.get("blocked") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(AppError::invalid("invalid_body", "`blocked` is true or false")),
    };
    let field = |key: &str| -> AppResult<Option<Option<String>>> {
        match body.get(key) {
            None => Ok(None),
            Some(Value::String(v)) => Ok(Some(Some(v.clone()))),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => Err(AppError::invalid("invalid_body", format!("`{key}` is a string, or null to clear it"))),
        }
    };
    let changes = contacts::ContactChanges {
        name: field("name")?,
        email: field("email")?,
        phone: field("phone")?,
        notes: field("notes")?,
        blocked,
        attributes,
    };
    let (user, role) = (auth.user, auth.role);
    let (item, stale) = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            let item = contacts::update(tc, log, user, role, id, changes)?;
            let page = contact_links::page(tc, user, role, item)?;
            Ok((page, contacts::stale_profiles(tc, &[id.0], Utc::now())?))
        })
        .await?;
    crate::inbox::sender::refresh_stale_profiles(&state, stale);
    // Blocking resolves the contact's conversation: room for the queue.
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::Ok().json(item))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    contact_id: crate::inbox::ContactId,
}

/// The team says two contacts are one customer (`contact_links::link`).
async fn link_contact(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<LinkBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = contact_id(&path)?;
    let other = body.into_inner().contact_id;
    let (user, role) = (auth.user, auth.role);
    let page = state
        .tenant_with_events(auth.scope(), move |tc, log| contact_links::link(tc, log, user, role, id, other))
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The contact is no longer one customer with the others
/// (`contact_links::unlink`).
async fn unlink_contact(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = contact_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let page =
        state.tenant_with_events(auth.scope(), move |tc, log| contact_links::unlink(tc, log, user, role, id)).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// A customer's right to erasure (`contacts::erase`): admins only, 204.
async fn erase_contact(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = contact_id(&path)?;
    let user = auth.user;
    state.tenant_with_events(auth.scope(), move |tc, log| contacts::erase(tc, log, user, id)).await?;
    state.wake_scrub.notify_one();
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct CannedQuery {
    q: Option<String>,
    conversation_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_canned(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<CannedQuery>,
) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let page = PageQuery { limit: q.limit, cursor: q.cursor }.parse()?;
    let conversation = match q.conversation_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.parse::<i64>()
                .map(ConversationId)
                .map_err(|_| AppError::bad_request("invalid_query", "conversation_id is not an id"))?,
        ),
        None => None,
    };
    let (text, user, role) = (super::search_text(q.q)?, auth.user, auth.role);
    let (items, filled) = state
        .db
        .tenant(auth.scope(), move |tc| {
            let items = canned::list(tc, text.as_deref(), page.after, page.limit)?;
            match conversation {
                Some(c) => Ok::<_, AppError>((Vec::new(), Some(canned::fill(tc, user, role, c, items)?))),
                None => Ok((items, None)),
            }
        })
        .await?;
    Ok(match filled {
        Some(filled) => HttpResponse::Ok().json(Paged::new(filled, page.limit, |c| c.canned.id)),
        None => HttpResponse::Ok().json(Paged::new(items, page.limit, |c| c.id)),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedBody {
    shortcut: String,
    text: String,
}

async fn create_canned(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<CannedBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let b = body.into_inner();
    let user = auth.user;
    let (item, added) = state.db.tenant(auth.scope(), move |tc| canned::create(tc, user, &b.shortcut, &b.text)).await?;
    // A retry gets the one it made: 200, not a second 201.
    Ok(if added { HttpResponse::Created().json(item) } else { HttpResponse::Ok().json(item) })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedPatch {
    #[serde(default)]
    shortcut: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

async fn update_canned(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<CannedPatch>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = path.parse::<i64>().map_err(|_| AppError::not_found("canned response"))?;
    let b = body.into_inner();
    let item = state
        .db
        .tenant(auth.scope(), move |tc| canned::update(tc, id, b.shortcut.as_deref(), b.text.as_deref()))
        .await?;
    Ok(HttpResponse::Ok().json(item))
}

async fn delete_canned(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = path.parse::<i64>().map_err(|_| AppError::not_found("canned response"))?;
    state.db.tenant(auth.scope(), move |tc| canned::delete(tc, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}
