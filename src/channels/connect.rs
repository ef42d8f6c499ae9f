//! The connect flows: they talk to Meta (outside any transaction) and then
//! write what Meta said in one tenant transaction.

use diesel::prelude::*;
use serde::Serialize;

use crate::ids::percent_encode as enc;

use super::oauth::{self, PendingPage};
use super::{ChannelId, ChannelView, NewChannel, Platform};
use crate::app::AppState;
use crate::auth::{AuthContext, Role};
use crate::db::schema::memberships;
use crate::db::TenantScope;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::meta::GraphError;
use crate::secret::Secret;

/// The URL of Meta's OAuth dialog, with a fresh signed state.
pub async fn start_facebook(app: &AppState, auth: &AuthContext) -> AppResult<String> {
    let (tenant, user, key) = (auth.tenant, auth.user, app.state_key.clone());
    let state = app.db.tenant(auth.scope(), move |tc| oauth::new_state(tc.pg(), &key, tenant, user)).await?;
    let m = &app.config.meta;
    Ok(format!(
        "{}/{}/dialog/oauth?client_id={}&redirect_uri={}&state={}&response_type=code&scope={}",
        m.dialog_url,
        m.graph_version,
        enc(&m.app_id),
        enc(&app.oauth_redirect_uri()),
        enc(&state),
        enc(oauth::SCOPES)
    ))
}

/// What the callback produced.
#[derive(Debug, Serialize)]
pub struct PendingSelection {
    pub selection_id: String,
    pub pages: Vec<PendingPageView>,
}

#[derive(Debug, Serialize)]
pub struct PendingPageView {
    #[serde(flatten)]
    pub page: PendingPage,
    /// Already connected to this tenant.
    pub connected: bool,
    /// Connected to another tenant.
    pub taken: bool,
}

fn role_in(conn: &mut PgConnection, tenant: TenantId, user: UserId) -> AppResult<Option<Role>> {
    let r: Option<String> = memberships::table
        .filter(memberships::tenant_id.eq(tenant.0))
        .filter(memberships::user_id.eq(user.0))
        .select(memberships::role)
        .first(conn)
        .optional()?;
    Ok(r.and_then(|r| Role::parse(&r)))
}

/// OAuth callback: spends the state, exchanges the code for a long-lived
/// user token, lists every page with its Instagram account and keeps them
/// as a pending selection of the tenant that started the flow.
pub async fn facebook_callback(app: &AppState, code: &str, state: &str) -> AppResult<PendingSelection> {
    let (key, state_owned) = (app.state_key.clone(), state.to_string());
    let (tenant, user) = app.db.public(move |conn| oauth::consume_state(conn, &key, &state_owned)).await?;
    let short = app.graph.exchange_code(code, Some(&app.oauth_redirect_uri())).await.map_err(|e| match e {
        GraphError::Other { .. } | GraphError::TokenInvalid { .. } | GraphError::Permission { .. } => {
            AppError::bad_request("oauth_failed", format!("Meta refused the authorization code: {e}"))
        }
        other => other.into(),
    })?;
    let long = app.graph.long_lived(&short.access_token).await?;
    let me = app.graph.me(&long.access_token).await?;
    let accounts = app.graph.accounts(&long.access_token).await?;
    let pages: Vec<PendingPage> = accounts
        .into_iter()
        .map(|a| PendingPage { id: a.id, name: a.name, category: a.category, instagram: a.instagram_business_account })
        .collect();
    let keys = app.keys.clone();
    let token = long.access_token;
    let selection = app
        .db
        .tenant(TenantScope::system(tenant), move |tc| {
            // The flow belongs to an admin; they may have lost the role since.
            if !role_in(tc.pg(), tenant, user)?.is_some_and(|r| r.at_least(Role::Admin)) {
                return Err(AppError::forbidden("forbidden", "only admins can connect channels"));
            }
            let id = oauth::create_selection(tc, &keys, user, &me.id, &token, &pages)?;
            let views = annotate(tc, pages)?;
            Ok(PendingSelection { selection_id: id, pages: views })
        })
        .await?;
    Ok(selection)
}

fn annotate(tc: &mut crate::db::TenantConn<'_>, pages: Vec<PendingPage>) -> AppResult<Vec<PendingPageView>> {
    let tenant = tc.tenant().0;
    pages
        .into_iter()
        .map(|page| {
            let holder = super::holder(tc.pg(), Platform::Facebook, &page.id)?;
            Ok(PendingPageView { connected: holder == Some(tenant), taken: holder.is_some_and(|t| t != tenant), page })
        })
        .collect()
}

pub async fn pending(app: &AppState, auth: &AuthContext, selection_id: String) -> AppResult<PendingSelection> {
    let keys = app.keys.clone();
    app.db
        .tenant(auth.scope(), move |tc| {
            let s = oauth::load_selection(tc, &keys, &selection_id)?;
            Ok(PendingSelection { selection_id: s.id, pages: annotate(tc, s.pages)? })
        })
        .await
}

/// Connects the chosen pages of a selection (and their Instagram accounts
/// when asked): subscribes the app to each page, then stores them.
pub async fn connect_facebook(
    app: &AppState,
    auth: &AuthContext,
    selection_id: String,
    page_ids: Vec<String>,
    instagram: bool,
) -> AppResult<Vec<ChannelView>> {
    if page_ids.is_empty() {
        return Err(AppError::invalid("invalid_body", "page_ids must name at least one page"));
    }
    let keys = app.keys.clone();
    let chosen = page_ids.clone();
    let selection = app
        .db
        .tenant(auth.scope(), move |tc| {
            let s = oauth::load_selection(tc, &keys, &selection_id)?;
            if let Some(unknown) = chosen.iter().find(|id| !s.pages.iter().any(|p| &p.id == *id)) {
                return Err(AppError::invalid("unknown_page", format!("page {unknown} is not in this selection")));
            }
            // Refuse early, before subscribing anything at Meta.
            let tenant = tc.tenant().0;
            for p in s.pages.iter().filter(|p| chosen.contains(&p.id)) {
                if super::holder(tc.pg(), Platform::Facebook, &p.id)?.is_some_and(|t| t != tenant) {
                    return Err(super::taken(Platform::Facebook, &p.id));
                }
                if let (true, Some(ig)) = (instagram, &p.instagram) {
                    if super::holder(tc.pg(), Platform::Instagram, &ig.id)?.is_some_and(|t| t != tenant) {
                        return Err(super::taken(Platform::Instagram, &ig.id));
                    }
                }
            }
            Ok(s)
        })
        .await?;
    // Fresh page tokens: the selection keeps only the user token.
    let accounts = app.graph.accounts(&selection.user_token).await?;
    let mut new_channels = Vec::new();
    for id in &page_ids {
        let account = accounts.iter().find(|a| &a.id == id).ok_or_else(|| {
            AppError::invalid("page_not_available", format!("Meta no longer lists page {id} for this user"))
        })?;
        app.graph.subscribe_page(&account.id, &account.access_token).await?;
        new_channels.push(NewChannel {
            platform: Platform::Facebook,
            external_id: account.id.clone(),
            name: account.name.clone(),
            token: account.access_token.clone(),
            parent_external_id: None,
            meta_user_id: Some(selection.meta_user_id.clone()),
        });
        if let (true, Some(ig)) = (instagram, &account.instagram_business_account) {
            new_channels.push(NewChannel {
                platform: Platform::Instagram,
                external_id: ig.id.clone(),
                name: ig.username.clone().or_else(|| ig.name.clone()).unwrap_or_else(|| ig.id.clone()),
                // Instagram messaging through Facebook Login uses the page token.
                token: account.access_token.clone(),
                parent_external_id: Some(account.id.clone()),
                meta_user_id: Some(selection.meta_user_id.clone()),
            });
        }
    }
    store(app, auth, new_channels, Vec::new()).await
}

/// What a WhatsApp business account says of one of its numbers: its id,
/// display number and quality rating (`whatsapp_number`).
/// A number as its account lists it: id, display number, quality rating,
/// messaging limit.
type ListedNumber = (String, Option<String>, Option<String>, Option<String>);

/// Stores the connected channels, and what their account says of each
/// WhatsApp number, in one transaction; their views as they are then.
async fn store(
    app: &AppState,
    auth: &AuthContext,
    new_channels: Vec<NewChannel>,
    listed: Vec<ListedNumber>,
) -> AppResult<Vec<ChannelView>> {
    let keys = app.keys.clone();
    let actor = auth.user;
    app.db
        .tenant(auth.scope(), move |tc| {
            let mut ids = Vec::with_capacity(new_channels.len());
            for c in &new_channels {
                let row = super::upsert_connected(tc, &keys, Some(actor), c)?;
                // A page was subscribed before it was stored.
                super::note_subscribed(tc, &row)?;
                ids.push(row.channel_id());
            }
            for (id, display, quality, limit) in &listed {
                super::whatsapp_number::listed(tc, id, display.as_deref(), quality.as_deref(), limit.as_deref())?;
            }
            ids.into_iter().map(|id| super::get_view(tc, id)).collect()
        })
        .await
}

/// How a WhatsApp business account is connected; made only by
/// [`WhatsappGrant::code`] or [`WhatsappGrant::token`], which check the
/// shapes Meta gives out before any of it goes into a Graph request.
pub struct WhatsappGrant(Grant);

enum Grant {
    /// Embedded sign-up: a code to exchange; the business accounts come
    /// from the token's granted scopes.
    Code(String),
    /// A business account id and a (system user) token for it.
    Token { waba_id: String, token: Secret<String> },
}

/// The longest sign-up code or access token taken (Meta's are a few
/// hundred characters): a longer one cannot be Meta's, and would not fit
/// in a request to it.
pub const MOST_GRANT_CHARS: usize = 4096;

/// A code or token as Meta writes them: visible ASCII, no spaces.
fn grant_shaped(s: &str) -> bool {
    !s.is_empty() && s.len() <= MOST_GRANT_CHARS && s.bytes().all(|b| b.is_ascii_graphic())
}

impl WhatsappGrant {
    /// An embedded sign-up's code (400 `oauth_failed` when it cannot be
    /// one, as for one Meta refuses).
    pub fn code(code: String) -> AppResult<Self> {
        if !grant_shaped(&code) {
            return Err(AppError::bad_request(
                "oauth_failed",
                format!("code is not a sign-up code: 1 to {MOST_GRANT_CHARS} visible ASCII characters"),
            ));
        }
        Ok(WhatsappGrant(Grant::Code(code)))
    }

    /// A business account's id and a token for it (422 `invalid_waba` for
    /// an id that is not Meta's numeric one: it names a Graph node, and
    /// must not name another; 422 `meta_token_invalid` for a token that
    /// cannot be one, as for one Meta refuses).
    pub fn token(waba_id: String, token: Secret<String>) -> AppResult<Self> {
        if waba_id.is_empty() || waba_id.len() > 32 || !waba_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AppError::invalid("invalid_waba", "waba_id must be the business account's numeric id"));
        }
        if !grant_shaped(token.expose()) {
            return Err(AppError::invalid(
                "meta_token_invalid",
                format!("access_token is not a Meta token: 1 to {MOST_GRANT_CHARS} visible ASCII characters"),
            ));
        }
        Ok(WhatsappGrant(Grant::Token { waba_id, token }))
    }
}

pub async fn connect_whatsapp(app: &AppState, auth: &AuthContext, grant: WhatsappGrant) -> AppResult<Vec<ChannelView>> {
    let (token, wabas, meta_user) = match grant.0 {
        Grant::Code(code) => {
            let t = app.graph.exchange_code(&code, None).await.map_err(|e| match e {
                GraphError::Other { .. } | GraphError::TokenInvalid { .. } | GraphError::Permission { .. } => {
                    AppError::bad_request("oauth_failed", format!("Meta refused the sign-up code: {e}"))
                }
                other => other.into(),
            })?;
            let debug = app.graph.debug_token(&t.access_token).await?;
            let mut wabas: Vec<String> = debug
                .granular_scopes
                .iter()
                .filter(|s| s.scope == "whatsapp_business_management")
                .flat_map(|s| s.target_ids.clone())
                .collect();
            wabas.sort();
            wabas.dedup();
            if wabas.is_empty() {
                return Err(AppError::invalid(
                    "no_business_account",
                    "the sign-up granted no WhatsApp business account",
                ));
            }
            (t.access_token, wabas, debug.user_id)
        }
        Grant::Token { waba_id, token } => (token, vec![waba_id], None),
    };
    let mut new_channels = Vec::new();
    let mut listed = Vec::new();
    for waba in &wabas {
        // An id Meta has no such object for (100) is the caller's: 422.
        let numbers = app.graph.phone_numbers(waba, &token).await.map_err(|e| match e {
            GraphError::Other { code: 100, .. } => AppError::invalid(
                "invalid_waba",
                format!("Meta has no WhatsApp business account {waba} that this token can read: {e}"),
            ),
            other => other.into(),
        })?;
        if numbers.is_empty() {
            return Err(AppError::invalid("no_phone_numbers", format!("business account {waba} has no phone numbers")));
        }
        // Refuse numbers another tenant holds before subscribing at Meta.
        let ids: Vec<String> = numbers.iter().map(|n| n.id.clone()).collect();
        let tenant = auth.tenant.0;
        app.db
            .public(move |conn| {
                for id in &ids {
                    if super::holder(conn, Platform::Whatsapp, id)?.is_some_and(|t| t != tenant) {
                        return Err(super::taken(Platform::Whatsapp, id));
                    }
                }
                Ok(())
            })
            .await?;
        app.graph.subscribe_waba(waba, &token).await?;
        for n in numbers {
            listed.push((n.id.clone(), n.display_phone_number.clone(), n.quality_rating.clone(), n.messaging_limit()));
            let name = match (&n.verified_name, &n.display_phone_number) {
                (Some(v), Some(d)) => format!("{v} ({d})"),
                (Some(v), None) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => n.id.clone(),
            };
            new_channels.push(NewChannel {
                platform: Platform::Whatsapp,
                external_id: n.id,
                name,
                token: token.clone(),
                parent_external_id: Some(waba.clone()),
                meta_user_id: meta_user.clone(),
            });
        }
    }
    // What the account says of each number (`whatsapp_number`), shown at
    // once and stored with the numbers.
    store(app, auth, new_channels, listed).await
}

/// Disconnects a channel: unsubscribes at Meta where nothing else of this
/// tenant depends on the subscription, then marks it disconnected (or
/// deletes it with its history when `purge`).
pub async fn disconnect(app: &AppState, auth: &AuthContext, id: ChannelId, purge: bool) -> AppResult<()> {
    let keys = app.keys.clone();
    let (row, token, others) = app
        .db
        .tenant(auth.scope(), move |tc| {
            let row = super::find(tc, id)?;
            let token = row.token(&keys)?;
            let key = row.parent_external_id.clone().unwrap_or_else(|| row.external_id.clone());
            let others = super::dependents_connected(tc, id, row.platform(), &key)?;
            Ok::<_, AppError>((row, token, others))
        })
        .await?;
    if let (Some(token), 0, true) = (token, others, row.status != "disconnected") {
        let result = match row.platform() {
            Platform::Facebook => app.graph.unsubscribe_page(&row.external_id, &token).await,
            Platform::Instagram => match &row.parent_external_id {
                Some(page) => app.graph.unsubscribe_page(page, &token).await,
                None => Ok(()),
            },
            Platform::Whatsapp => match &row.parent_external_id {
                Some(waba) => app.graph.unsubscribe_waba(waba, &token).await,
                None => Ok(()),
            },
        };
        // The admin wants it gone; Meta being unreachable or the token being
        // dead already must not keep it connected here.
        if let Err(e) = result {
            tracing::warn!(channel = id.0, error = %e, "unsubscribe at Meta failed; disconnecting anyway");
        }
    }
    let actor = auth.user;
    app.db
        .tenant(auth.scope(), move |tc| {
            if purge {
                super::purge(tc, Some(actor), id)
            } else {
                super::mark_disconnected(tc, Some(actor), id, "disconnected_by_admin")
            }
        })
        .await
}

/// Checks a channel's token and subscription at Meta: a rejected token makes
/// the channel `reauth_required`; a lost page or WhatsApp business account
/// subscription is renewed.
pub async fn check_health(app: &AppState, scope: TenantScope, id: ChannelId) -> AppResult<ChannelView> {
    let keys = app.keys.clone();
    let (row, token) = app
        .db
        .tenant(scope, move |tc| {
            let row = super::find(tc, id)?;
            let token = row.token(&keys)?;
            Ok::<_, AppError>((row, token))
        })
        .await?;
    if let (Some(token), "connected" | "reauth_required") = (token, row.status.as_str()) {
        let result = match row.platform() {
            Platform::Facebook | Platform::Instagram => {
                let page = row.parent_external_id.clone().unwrap_or_else(|| row.external_id.clone());
                // Subscribed with fewer fields than this release asks for
                // (by an older one): once more, with all of them.
                let ours = row.subscribed_fields.as_deref() == Some(crate::meta::graph::PAGE_FIELDS);
                match app.graph.page_subscribed(&page, &token).await {
                    Ok(subscribed) if !subscribed || !ours => {
                        let r = app.graph.subscribe_page(&page, &token).await;
                        if r.is_ok() {
                            let row = row.clone();
                            app.db.tenant(scope, move |tc| super::note_subscribed(tc, &row)).await?;
                        }
                        r
                    }
                    other => other.map(|_| ()),
                }
            }
            // The number's token reads its business account; the account's
            // subscription, lost after failed deliveries, is renewed.
            Platform::Whatsapp => match &row.parent_external_id {
                Some(waba) => match app.graph.phone_numbers(waba, &token).await {
                    Ok(numbers) => {
                        if let Some(n) = numbers.into_iter().find(|n| n.id == row.external_id) {
                            app.db
                                .tenant(scope, move |tc| {
                                    super::whatsapp_number::listed(
                                        tc,
                                        &n.id,
                                        n.display_phone_number.as_deref(),
                                        n.quality_rating.as_deref(),
                                        n.messaging_limit().as_deref(),
                                    )
                                })
                                .await?;
                        }
                        match app.graph.waba_subscribed(waba, &token).await {
                            Ok(false) => app.graph.subscribe_waba(waba, &token).await,
                            other => other.map(|_| ()),
                        }
                    }
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
        };
        match result {
            Err(e) if e.is_token_invalid() => {
                let reason = e.to_string();
                app.db.tenant(scope, move |tc| super::mark_reauth_required(tc, id, &reason)).await?;
            }
            Err(e) => tracing::warn!(channel = id.0, error = %e, "channel health check failed"),
            // A disabled WhatsApp account's or a blocked page's token still
            // reads it: only Meta lifts those (`whatsapp_account`, `policy`).
            Ok(())
                if row.status == "reauth_required"
                    && !row.status_reason.as_deref().is_some_and(|r| super::HELD_BY_META.contains(&r)) =>
            {
                // The token works again (restored at Meta): back to connected.
                app.db.tenant(scope, move |tc| super::restore_connected(tc, id, None)).await?;
            }
            Ok(()) => {}
        }
    }
    app.db.tenant(scope, move |tc| super::get_view(tc, id)).await
}

/// Called wherever a Graph call with a channel's token fails: a 190 makes
/// the channel `reauth_required`. Returns the error for the caller.
pub async fn note_graph_error(app: &AppState, tenant: TenantId, id: ChannelId, e: GraphError) -> GraphError {
    if e.is_token_invalid() {
        let reason = e.to_string();
        let r =
            app.db.tenant(TenantScope::system(tenant), move |tc| super::mark_reauth_required(tc, id, &reason)).await;
        if let Err(err) = r {
            tracing::error!(error = ?err, "could not mark channel reauth_required");
        }
    }
    e
}
