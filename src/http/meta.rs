//! Meta-facing callbacks (no JWT): deauthorize and data deletion, verified
//! by `signed_request`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{resource, AppState};
use crate::channels::meta_callbacks;
use crate::error::{AppError, AppResult};
use crate::meta::signed_request::{self, SignedRequestError};

/// Meta's signed requests are a few hundred bytes.
const FORM_LIMIT: usize = 64 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::FormConfig::default().limit(FORM_LIMIT).error_handler(|e, _| {
        use actix_web::error::UrlencodedError;
        match e {
            UrlencodedError::Overflow { .. } => AppError::new(
                crate::error::ErrorKind::PayloadTooLarge,
                "payload_too_large",
                format!("the body is larger than {FORM_LIMIT} bytes"),
            ),
            e => AppError::bad_request("invalid_form", format!("expected a form with signed_request: {e}")),
        }
        .into()
    }))
    .service(resource("/meta/deauthorize").post(deauthorize))
    .service(resource("/meta/data-deletion").post(data_deletion))
    .service(resource("/meta/data-deletion/{code}").get(deletion_status));
}

#[derive(Deserialize)]
struct SignedForm {
    signed_request: String,
}

fn verify(state: &AppState, raw: &str) -> AppResult<signed_request::SignedRequest> {
    signed_request::verify(raw, state.config.meta.app_secret.expose()).map_err(|e| match e {
        SignedRequestError::BadSignature => {
            AppError::forbidden("invalid_signature", "signed_request signature does not match")
        }
        other => AppError::bad_request("invalid_signed_request", other.to_string()),
    })
}

async fn deauthorize(state: web::Data<AppState>, form: web::Form<SignedForm>) -> AppResult<HttpResponse> {
    let req = verify(&state, &form.signed_request)?;
    let n = meta_callbacks::deauthorize(&state, &req.user_id).await?;
    tracing::info!(channels = n, "deauthorize callback");
    Ok(HttpResponse::Ok().json(json!({"success": true})))
}

async fn data_deletion(state: web::Data<AppState>, form: web::Form<SignedForm>) -> AppResult<HttpResponse> {
    let req = verify(&state, &form.signed_request)?;
    let receipt = meta_callbacks::delete_user_data(&state, &req.user_id, &form.signed_request).await?;
    let url = format!("{}/meta/data-deletion/{}", state.config.public_url, receipt.confirmation_code);
    Ok(HttpResponse::Ok().json(json!({"url": url, "confirmation_code": receipt.confirmation_code})))
}

async fn deletion_status(state: web::Data<AppState>, path: web::Path<String>) -> AppResult<HttpResponse> {
    let code = path.into_inner();
    if code.len() > 64 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AppError::not_found("deletion request"));
    }
    let status = meta_callbacks::deletion_status(&state, code.clone())
        .await?
        .ok_or_else(|| AppError::not_found("deletion request"))?;
    let (headline, detail) = match status.status.as_str() {
        "completed" => (
            "Your data has been deleted",
            format!(
                "The request was received on {} and completed on {}.",
                status.created_at.format("%Y-%m-%d %H:%M UTC"),
                status.completed_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
            ),
        ),
        _ => (
            "Your request is being processed",
            format!("Received on {}.", status.created_at.format("%Y-%m-%d %H:%M UTC")),
        ),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Data deletion {code}</title>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{headline}</h1>\
         <p>Confirmation code: <strong>{code}</strong></p><p>Status: <strong>{}</strong></p><p>{detail}</p>\
         <p>Switchboard removed the Facebook access tokens and the link to your Facebook account from every \
         business inbox that held them.</p></body></html>",
        status.status
    );
    Ok(crate::web::page(html))
}
