//! The fake's side of files sent by a business: `multipart/form-data`
//! Graph calls, Messenger and Instagram attachments uploaded with the Send
//! API call (`filedata`), WhatsApp's media upload
//! (`POST /{phone-number-id}/media`) and media messages sent by the id it
//! gives. Each checks what Meta checks: the types and sizes each platform
//! takes, a caption only where one is shown.
//!
//! Not faithful, on purpose: attachments by URL (`payload.url`, WhatsApp's
//! `link`) are refused with a message saying so, since the fake would have
//! to fetch them; Switchboard always uploads.

use actix_web::http::header::HeaderMap;
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::messaging::{wa_error, wa_error_as, Account};
use super::{graph_error, random_alnum, Owner, State};

const MB: usize = 1024 * 1024;

/// A file part of a multipart Graph call.
pub(in crate::meta::fake) struct FakeFile {
    pub mime: String,
    pub bytes: Vec<u8>,
}

/// Reads a multipart body as Meta does: each field's value, parsed as JSON
/// when it is an object or array (`recipient`, `message`), else as text;
/// and at most one file. The fields (with the file described, not its
/// bytes, for the request log) and the file.
pub(in crate::meta::fake) async fn read_form(
    headers: &HeaderMap,
    body: actix_web::web::Bytes,
) -> Result<(Value, Option<FakeFile>), String> {
    use futures_util::TryStreamExt;
    let stream = futures_util::stream::once(async move { Ok::<_, actix_web::error::PayloadError>(body) });
    let mut form = actix_multipart::Multipart::new(headers, stream);
    let mut fields = Map::new();
    let mut file = None;
    while let Some(mut field) = form.try_next().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.content_disposition().and_then(|d| d.get_filename()).map(str::to_string);
        let mime = field.content_type().map(|m| m.essence_str().to_string());
        let mut bytes = Vec::new();
        while let Some(chunk) = field.try_next().await.map_err(|e| e.to_string())? {
            bytes.extend_from_slice(&chunk);
        }
        if filename.is_some() {
            if file.is_some() {
                return Err("only one file may be uploaded per call".into());
            }
            fields.insert(name, json!({"filename": filename, "content_type": mime, "size": bytes.len()}));
            file = Some(FakeFile { mime: mime.unwrap_or_else(|| "application/octet-stream".into()), bytes });
            continue;
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("the field {name} is not UTF-8"))?;
        let value = match text.trim_start().chars().next() {
            Some('{' | '[') => {
                serde_json::from_str(&text).map_err(|_| format!("the field {name} is not valid JSON"))?
            }
            _ => Value::String(text),
        };
        fields.insert(name, value);
    }
    Ok((Value::Object(fields), file))
}

/// The file extension the fake's CDN names a file with.
fn extension(mime: &str) -> &str {
    match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "audio/mpeg" => "mp3",
        "audio/mp4" => "m4a",
        "application/pdf" => "pdf",
        _ => "bin",
    }
}

/// The attachment of a Messenger or Instagram send, uploaded with it: put
/// on the fake's CDN, and echoed as Meta echoes it (`[{type, payload: {url}}]`).
/// `None` for a text message.
pub(in crate::meta::fake) fn messenger_attachment(
    st: &mut State,
    account: &Account,
    message: &Value,
    file: Option<&FakeFile>,
    base: &str,
) -> Result<Option<Value>, Box<HttpResponse>> {
    let Some(attachment) = message.get("attachment") else {
        return match file {
            Some(_) => Err(Box::new(graph_error(100, None, "(#100) filedata was given without message[attachment]"))),
            None => Ok(None),
        };
    };
    if message.get("text").is_some() {
        return Err(Box::new(graph_error(
            100,
            None,
            "(#100) Only one of message[text] and message[attachment] may be set",
        )));
    }
    let kind = attachment.get("type").and_then(Value::as_str).unwrap_or_default();
    if !["image", "audio", "video", "file"].contains(&kind) {
        return Err(Box::new(graph_error(
            100,
            None,
            "(#100) Param message[attachment][type] must be one of {IMAGE, AUDIO, VIDEO, FILE}",
        )));
    }
    let Some(file) = file.filter(|f| !f.bytes.is_empty()) else {
        return Err(Box::new(graph_error(
            100,
            Some(2018047),
            "(#100) Upload attachment failure. (The fake takes attachments uploaded as filedata, not by url or attachment_id.)",
        )));
    };
    let instagram = matches!(account, Account::Instagram { .. });
    let most = if instagram && kind == "image" { 8 * MB } else { 25 * MB };
    if file.bytes.len() > most {
        return Err(Box::new(graph_error(
            100,
            Some(2018294),
            "(#100) Upload attachment failure: the file is too large.",
        )));
    }
    if instagram {
        let allowed: &[&str] = match kind {
            "image" => &["image/png", "image/jpeg", "image/gif"],
            "video" => &["video/mp4", "video/ogg", "video/x-msvideo", "video/quicktime", "video/webm"],
            "audio" => &["audio/aac", "audio/mp4", "audio/x-m4a", "audio/wav", "audio/x-wav"],
            _ => &["application/pdf"],
        };
        if !allowed.contains(&file.mime.as_str()) {
            return Err(Box::new(graph_error(
                100,
                Some(2018047),
                "(#100) Upload attachment failure: Instagram does not take this type of file.",
            )));
        }
    }
    let name = format!("{}.{}", random_alnum(24), extension(&file.mime));
    st.cdn.insert(name.clone(), (file.mime.clone(), file.bytes.clone()));
    Ok(Some(json!([{"type": kind, "payload": {"url": format!("{base}/_fake/cdn/{name}")}}])))
}

/// What WhatsApp takes, by message type: the media types and the largest size.
fn whatsapp_types(kind: &str) -> Option<(&'static [&'static str], usize)> {
    Some(match kind {
        "image" => (&["image/jpeg", "image/png"], 5 * MB),
        "video" => (&["video/mp4", "video/3gpp"], 16 * MB),
        "audio" => (&["audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"], 16 * MB),
        "document" => (&crate::inbox::uploads::WHATSAPP_DOCUMENT_TYPES, 100 * MB),
        _ => return None,
    })
}

fn media_error(details: &str) -> HttpResponse {
    wa_error_as(actix_web::http::StatusCode::BAD_REQUEST, 131053, "(#131053) Media upload error", details)
}

/// `POST /{phone-number-id}/media` (multipart: `messaging_product`, `file`,
/// `type`) → `{id}`: a media object of the number, which `GET /{media-id}`
/// then serves as it serves a customer's.
pub(in crate::meta::fake) fn whatsapp_upload(
    st: &mut State,
    owner: &Owner,
    phone: &str,
    fields: &Value,
    file: Option<FakeFile>,
) -> HttpResponse {
    let Some(account @ Account::Phone(_)) = st.account_of(phone) else { return super::no_object(phone) };
    if !st.may_use(owner, &account) {
        return graph_error(200, None, "(#200) The access token cannot upload media for this number");
    }
    if fields.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return wa_error(100, "(#100) The parameter messaging_product is required.");
    }
    let Some(file) = file else { return wa_error(100, "(#100) The parameter file is required.") };
    let mime = fields.get("type").and_then(Value::as_str).unwrap_or(&file.mime).to_string();
    let limit = ["image", "video", "audio", "document"]
        .into_iter()
        .filter_map(whatsapp_types)
        .find(|(types, _)| types.contains(&mime.as_str()))
        .map(|(_, most)| most);
    let Some(most) = limit else { return media_error(&format!("Unsupported file type: {mime}")) };
    if file.bytes.is_empty() || file.bytes.len() > most {
        return media_error(&format!("The file must be 1 byte to {} MB for {mime}", most / MB));
    }
    let id = st.id("10204");
    st.media.insert(id.clone(), (phone.to_string(), mime, file.bytes));
    HttpResponse::Ok().json(json!({"id": id}))
}

/// Checks a WhatsApp media message (`type` image, video, audio or
/// document) sent by the id of a media object of the number.
pub(in crate::meta::fake) fn check_media_send(
    st: &State,
    phone: &str,
    kind: &str,
    body: &Value,
) -> Result<(), Box<HttpResponse>> {
    let Some(media) = body.get(kind) else {
        return Err(Box::new(wa_error(100, &format!("(#100) The parameter {kind} is required."))));
    };
    let Some(id) = media.get("id").and_then(Value::as_str) else {
        return Err(Box::new(wa_error(
            100,
            &match media.get("link") {
                Some(_) => format!("(#100) The fake sends {kind} by id: upload it to /{phone}/media first"),
                None => format!("(#100) Param {kind} must have an id or a link"),
            },
        )));
    };
    let Some((_, mime, _)) = st.media.get(id).filter(|(owner, _, _)| owner == phone) else {
        return Err(Box::new(wa_error(
            100,
            &format!("(#100) Param {kind}['id'] is not a valid whatsapp business account media attachment ID"),
        )));
    };
    let (types, _) = whatsapp_types(kind).unwrap_or((&[], 0));
    if kind != "document" && !types.contains(&mime.as_str()) {
        return Err(Box::new(media_error(&format!("A {kind} message cannot carry {mime}"))));
    }
    if let Some(caption) = media.get("caption") {
        if kind == "audio" {
            return Err(Box::new(wa_error(100, "(#100) Param audio['caption'] is not a valid parameter")));
        }
        if caption.as_str().is_none_or(|c| c.chars().count() > 1024) {
            return Err(Box::new(wa_error(
                100,
                &format!("(#100) Param {kind}['caption'] must be text of at most 1024 characters"),
            )));
        }
    }
    Ok(())
}
