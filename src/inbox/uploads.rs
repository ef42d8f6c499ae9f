//! Files agents send: a photo, a video, a voice note, a PDF.
//!
//! `POST /api/conversations/{id}/messages` as `multipart/form-data` with a
//! `file` part (and `client_id`, and for WhatsApp an optional caption as
//! `text`) stores the message `pending` with the file, and the sender
//! uploads it to Meta with the send: Messenger and Instagram take the file
//! in the Send API call itself (`filedata`); WhatsApp takes it at
//! `/{phone-number-id}/media` first and is then sent the media's id. Meta
//! never has to reach this server to fetch it.
//!
//! Decisions:
//! - One file per message, at most [`MOST_BYTES`] (Meta's 25 MB for
//!   Messenger and Instagram; WhatsApp's smaller limits per kind below).
//! - What the file is comes from its first bytes; the name and type the
//!   client gave are believed only where the bytes say nothing (plain
//!   text, say), and never for an image, a video or a sound, which clients
//!   are shown inline.
//! - Each platform's own rules are checked before anything is stored, so
//!   an agent learns at once, not from a failed send:
//!   - Messenger: any file; images, videos and sounds shown as such.
//!   - Instagram: PNG, JPEG or GIF images up to 8 MB; MP4, OGG, AVI, MOV or
//!     WebM videos; AAC, M4A, WAV or MP4 sounds; PDF files.
//!   - WhatsApp: JPEG or PNG images up to 5 MB; MP4 or 3GPP videos and AAC,
//!     AMR, MP3, M4A or OGG sounds up to 16 MB; documents that are text,
//!     PDF, Word, Excel or PowerPoint.
//! - A caption (`text`) goes with a WhatsApp image, video or document, at
//!   most 1,024 characters, and is the message's text. Messenger and
//!   Instagram show no caption (a text is a message of its own), and
//!   neither does a WhatsApp sound: there it is refused
//!   (`caption_not_supported`) rather than sent apart or dropped.
//! - The file is kept with the message, in the tenant's `media_copies`
//!   (as copies of customers' media are), and served to the team at the
//!   attachment's `url`; it goes with the message (a purge, a dropped
//!   tenant).

use serde_json::{json, Value};

use crate::channels::Platform;
use crate::error::{AppError, AppResult, ErrorKind};

/// The largest file an agent may send.
pub const MOST_BYTES: usize = super::media_copies::MOST_BYTES;
/// Files read from agents at once by one instance: each is held in memory
/// while read (up to [`MOST_BYTES`]); more wait, unread, their bytes left
/// in the network's buffers.
pub const READ_AT_ONCE: usize = 8;
/// The longest caption (WhatsApp's).
pub const MOST_CAPTION_CHARS: usize = 1024;
/// The longest file name kept.
const MOST_NAME_CHARS: usize = 200;

const MB: usize = 1024 * 1024;

/// What WhatsApp takes as a document (Meta's list; the fake checks with it too).
pub const WHATSAPP_DOCUMENT_TYPES: [&str; 8] = [
    "text/plain",
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
];

/// What a file is shown and sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Video,
    Audio,
    File,
}

impl Kind {
    /// The attachment `type` (Messenger's words; a WhatsApp document is a `file`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Video => "video",
            Kind::Audio => "audio",
            Kind::File => "file",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "image" => Kind::Image,
            "video" => Kind::Video,
            "audio" => Kind::Audio,
            "file" => Kind::File,
            _ => return None,
        })
    }

    /// WhatsApp's message type for it.
    pub fn whatsapp_type(self) -> &'static str {
        match self {
            Kind::File => "document",
            k => k.as_str(),
        }
    }

    fn of(mime: &str) -> Kind {
        match mime.split('/').next() {
            Some("image") => Kind::Image,
            Some("video") => Kind::Video,
            Some("audio") => Kind::Audio,
            _ => Kind::File,
        }
    }
}

/// A file as an agent sent it, its type found out.
pub struct Upload {
    pub filename: Option<String>,
    pub mime: String,
    pub bytes: Vec<u8>,
    /// The SHA-256 of the bytes, in hex: a retry is the same file.
    pub sha256: String,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("filename", &self.filename)
            .field("mime", &self.mime)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Upload {
    /// The file's type from its bytes; else the `declared` one (or the
    /// one its name's extension says), unless it claims an image, a video
    /// or a sound the bytes do not show. An Office document's bytes say
    /// only "an archive" (or which Office family) for certain: there the
    /// client's Office type is believed.
    pub fn new(bytes: Vec<u8>, declared: Option<&str>, filename: Option<&str>) -> Upload {
        let found = infer::get(&bytes).map(|t| normalized(t.mime_type()).to_string());
        let declared = declared
            .map(|d| d.split(';').next().unwrap_or(d).trim().to_ascii_lowercase())
            .filter(|d| plausible_mime(d) && Kind::of(d) == Kind::File && d != "application/octet-stream")
            .or_else(|| filename.and_then(office_type_of_name).map(str::to_string));
        let mime = match (found, declared) {
            (Some(found), Some(office)) if same_office_family(&found, &office) => office,
            (found, declared) => found.or(declared).unwrap_or_else(|| "application/octet-stream".into()),
        };
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        Upload { filename: filename.and_then(clean_name), mime, bytes, sha256 }
    }

    pub fn kind(&self) -> Kind {
        Kind::of(&self.mime)
    }

    /// The stored attachment: shown to clients (with a `url` on this
    /// server, as [`super::views::shown_attachments`] gives it) and read
    /// by the sender ([`Sendable::of`]).
    pub fn attachment(&self) -> Value {
        json!({
            "type": self.kind().as_str(),
            "url": null,
            "filename": self.filename,
            "mime_type": self.mime,
            "size": self.bytes.len(),
            "sha256": self.sha256,
            "uploaded": true,
        })
    }
}

/// Meta's names for what `infer` calls otherwise.
fn normalized(mime: &str) -> &str {
    match mime {
        "audio/m4a" | "audio/x-m4a" => "audio/mp4",
        "audio/x-wav" | "audio/wave" => "audio/wav",
        "audio/x-aac" => "audio/aac",
        "video/3gp" => "video/3gpp",
        m => m,
    }
}

const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";
const OLE_TYPES: [&str; 3] = ["application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"];

/// An Office type by the file name's extension.
fn office_type_of_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "docx" => DOCX,
        "xlsx" => XLSX,
        "pptx" => PPTX,
        "doc" => OLE_TYPES[0],
        "xls" => OLE_TYPES[1],
        "ppt" => OLE_TYPES[2],
        _ => return None,
    })
}

/// Whether the client's Office type fits what the bytes show: a ZIP archive
/// for the Open XML ones (what `found` then says, an archive or one of them,
/// is a guess from where its parts lie), an OLE2 file for the older ones.
fn same_office_family(found: &str, office: &str) -> bool {
    let open_xml = [DOCX, XLSX, PPTX];
    (open_xml.contains(&office) && (found == "application/zip" || open_xml.contains(&found)))
        || (OLE_TYPES.contains(&office) && OLE_TYPES.contains(&found))
}

/// `type/subtype` of token characters, as a client may name a document's type.
fn plausible_mime(m: &str) -> bool {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    m.len() <= 100 && m.split_once('/').is_some_and(|(t, s)| token(t) && token(s))
}

/// The file's own name, without a path, control characters or quotes, at
/// most [`MOST_NAME_CHARS`]; `None` if nothing is left.
fn clean_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let kept: String = base.chars().filter(|c| !c.is_control() && *c != '"').take(MOST_NAME_CHARS).collect::<String>();
    let kept = kept.trim();
    (!kept.is_empty() && kept != "." && kept != "..").then(|| kept.to_string())
}

fn unsupported(what: String) -> AppError {
    AppError::invalid("unsupported_attachment", what)
}

fn too_large(what: &str, most_mb: usize) -> AppError {
    AppError::new(ErrorKind::PayloadTooLarge, "file_too_large", format!("{what} must be at most {most_mb} MB"))
}

/// Whether `platform` takes the file as it is, with `caption`; the kind it
/// goes as. Checked before the message is stored.
pub fn check(platform: Platform, upload: &Upload, caption: Option<&str>) -> AppResult<Kind> {
    let (kind, mime, len) = (upload.kind(), upload.mime.as_str(), upload.bytes.len());
    if upload.bytes.is_empty() {
        return Err(AppError::invalid("empty_file", "the file is empty"));
    }
    if len > MOST_BYTES {
        return Err(too_large("a file", MOST_BYTES / MB));
    }
    match platform {
        Platform::Facebook => {}
        Platform::Instagram => {
            let (allowed, most): (&[&str], usize) = match kind {
                Kind::Image => (&["image/png", "image/jpeg", "image/gif"], 8),
                Kind::Video => (&["video/mp4", "video/ogg", "video/x-msvideo", "video/quicktime", "video/webm"], 25),
                Kind::Audio => (&["audio/aac", "audio/mp4", "audio/wav"], 25),
                Kind::File => (&["application/pdf"], 25),
            };
            if !allowed.contains(&mime) {
                return Err(unsupported(format!(
                    "Instagram does not take {mime}: send PNG, JPEG or GIF images, MP4, OGG, AVI, MOV or WebM videos, AAC, M4A or WAV sounds, or PDF files"
                )));
            }
            if len > most * MB {
                return Err(too_large(&format!("an Instagram {}", kind.as_str()), most));
            }
        }
        Platform::Whatsapp => {
            let (allowed, most): (&[&str], usize) = match kind {
                Kind::Image => (&["image/jpeg", "image/png"], 5),
                Kind::Video => (&["video/mp4", "video/3gpp"], 16),
                Kind::Audio => (&["audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"], 16),
                Kind::File => (&WHATSAPP_DOCUMENT_TYPES, 25),
            };
            if !allowed.contains(&mime) {
                return Err(unsupported(format!(
                    "WhatsApp does not take {mime}: send JPEG or PNG images, MP4 or 3GPP videos, AAC, AMR, MP3, M4A or OGG sounds, or text, PDF, Word, Excel or PowerPoint documents"
                )));
            }
            if len > most * MB {
                return Err(too_large(&format!("a WhatsApp {}", kind.as_str()), most));
            }
        }
    }
    if let Some(caption) = caption {
        if platform != Platform::Whatsapp || kind == Kind::Audio {
            return Err(AppError::invalid(
                "caption_not_supported",
                "this platform shows no text with this kind of file: send the text as a message of its own",
            ));
        }
        if caption.trim().is_empty() {
            return Err(AppError::invalid("empty_text", "a caption must not be empty; leave it out instead"));
        }
        if caption.chars().count() > MOST_CAPTION_CHARS {
            return Err(AppError::invalid(
                "text_too_long",
                format!("a caption must be at most {MOST_CAPTION_CHARS} characters"),
            ));
        }
    }
    Ok(kind)
}

/// An uploaded file as the sender needs it (the bytes are read apart).
#[derive(Debug, Clone, PartialEq)]
pub struct Sendable {
    pub kind: Kind,
    pub mime: String,
    pub filename: Option<String>,
}

impl Sendable {
    /// The message's uploaded file, if it has one (it is its only attachment).
    pub fn of(attachments: &Value) -> Option<Sendable> {
        let a = attachments.as_array()?.first()?;
        if a.get("uploaded").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        Some(Sendable {
            kind: Kind::parse(a.get("type")?.as_str()?)?,
            mime: a.get("mime_type")?.as_str()?.to_string(),
            filename: a.get("filename").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// The name Meta is given for it: the agent's, or one made of its kind.
    pub fn name(&self) -> String {
        self.filename.clone().unwrap_or_else(|| {
            let ext = self.mime.rsplit('/').next().filter(|e| e.len() <= 10 && !e.contains('.')).unwrap_or("bin");
            format!("{}.{ext}", self.kind.as_str())
        })
    }
}

/// The SHA-256 an attachment was stored with (a retry must match it).
pub fn stored_sha256(attachments: &Value) -> Option<&str> {
    attachments.as_array()?.first()?.get("sha256")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n";

    #[test]
    fn the_bytes_say_what_a_file_is_not_the_client() {
        let png = Upload::new(PNG.to_vec(), Some("application/pdf"), Some("C:\\Users\\ana\\photo.png"));
        assert_eq!((png.mime.as_str(), png.kind()), ("image/png", Kind::Image));
        assert_eq!(png.filename.as_deref(), Some("photo.png"));
        // An "image" the bytes do not show is a file of unknown type.
        let fake = Upload::new(b"no picture here".to_vec(), Some("image/svg+xml"), Some("x.svg"));
        assert_eq!((fake.mime.as_str(), fake.kind()), ("application/octet-stream", Kind::File));
        // A page is a file to download, whatever it claims to be.
        let page = Upload::new(b"<html><script>alert(1)</script>".to_vec(), Some("image/png"), Some("x.png"));
        assert_eq!((page.mime.as_str(), page.kind()), ("text/html", Kind::File));
        // What the bytes cannot tell (text) keeps the client's type.
        let text =
            Upload::new(b"order 1234\n".to_vec(), Some("text/plain; charset=utf-8"), Some("../../etc/notes.txt"));
        assert_eq!((text.mime.as_str(), text.filename.as_deref()), ("text/plain", Some("notes.txt")));
        let odd = Upload::new(b"x".to_vec(), Some("not a type"), Some("\"\u{7}"));
        assert_eq!((odd.mime.as_str(), odd.filename), ("application/octet-stream", None));
    }

    #[test]
    fn an_office_document_is_what_the_client_says_if_the_bytes_agree() {
        // A DOCX is a ZIP archive whose parts' order tells, only sometimes, which it is.
        let zip = b"PK\x03\x04\x14\0\0\0\x08\0rest of an archive".to_vec();
        let docx = Upload::new(zip.clone(), Some(DOCX), Some("contrato.docx"));
        assert_eq!(docx.mime, DOCX);
        let by_name = Upload::new(zip.clone(), Some("application/octet-stream"), Some("Folha.XLSX"));
        assert_eq!(by_name.mime, XLSX);
        // An archive is no spreadsheet because it says so: only an Office type is believed.
        let zip_named = Upload::new(zip.clone(), Some("application/pdf"), Some("a.pdf"));
        assert_eq!(zip_named.mime, "application/zip");
        // A PDF is a PDF whatever its name.
        let pdf = Upload::new(PDF.to_vec(), Some(DOCX), Some("x.docx"));
        assert_eq!(pdf.mime, "application/pdf");
        assert!(check(Platform::Whatsapp, &docx, None).is_ok());
    }

    #[test]
    fn each_platform_takes_what_it_shows() {
        let png = Upload::new(PNG.to_vec(), None, None);
        let pdf = Upload::new(PDF.to_vec(), None, Some("invoice.pdf"));
        let zip = Upload::new(b"PK\x03\x04\x14\0\0\0\x08\0".to_vec(), Some("application/zip"), None);
        for p in [Platform::Facebook, Platform::Instagram, Platform::Whatsapp] {
            assert_eq!(check(p, &png, None).ok(), Some(Kind::Image));
            assert_eq!(check(p, &pdf, None).ok(), Some(Kind::File));
        }
        assert_eq!(check(Platform::Facebook, &zip, None).ok(), Some(Kind::File));
        for p in [Platform::Instagram, Platform::Whatsapp] {
            assert_eq!(check(p, &zip, None).err().map(|e| e.code), Some("unsupported_attachment".into()));
        }
        let empty = Upload::new(Vec::new(), Some("text/plain"), None);
        assert_eq!(check(Platform::Facebook, &empty, None).err().map(|e| e.code), Some("empty_file".into()));
        let mut big = PNG.to_vec();
        big.resize(6 * MB, 0);
        let big = Upload::new(big, None, None);
        assert!(check(Platform::Facebook, &big, None).is_ok());
        let e = check(Platform::Whatsapp, &big, None).err();
        assert_eq!(e.map(|e| (e.code, e.kind)), Some(("file_too_large".into(), ErrorKind::PayloadTooLarge)));
    }

    #[test]
    fn a_caption_goes_only_where_it_is_shown() {
        let png = Upload::new(PNG.to_vec(), None, None);
        assert!(check(Platform::Whatsapp, &png, Some("your receipt 🧾")).is_ok());
        for p in [Platform::Facebook, Platform::Instagram] {
            let e = check(p, &png, Some("hi")).err();
            assert_eq!(e.map(|e| e.code), Some("caption_not_supported".into()));
        }
        let long = "é".repeat(MOST_CAPTION_CHARS + 1);
        assert_eq!(check(Platform::Whatsapp, &png, Some(&long)).err().map(|e| e.code), Some("text_too_long".into()));
    }

    #[test]
    fn the_stored_attachment_is_what_the_sender_reads() {
        let pdf = Upload::new(PDF.to_vec(), None, Some("invoice.pdf"));
        let stored = Value::Array(vec![pdf.attachment()]);
        let s = Sendable::of(&stored);
        assert_eq!(
            s,
            Some(Sendable { kind: Kind::File, mime: "application/pdf".into(), filename: Some("invoice.pdf".into()) })
        );
        assert_eq!(stored_sha256(&stored), Some(pdf.sha256.as_str()));
        assert_eq!(Sendable::of(&json!([{"type": "image", "url": "https://x.fbcdn.net/1.jpg"}])), None);
        let unnamed = Sendable { kind: Kind::Image, mime: "image/png".into(), filename: None };
        assert_eq!(unnamed.name(), "image.png");
    }
}
