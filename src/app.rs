//! The services a running server shares between its handlers and workers.

use std::sync::Arc;

use crate::auth::JwtKeys;
use crate::channels::oauth::state_key;
use crate::config::ServerConfig;
use crate::crypto::Keyring;
use crate::db::Db;
use crate::meta::GraphClient;

pub struct AppState {
    pub db: Db,
    pub config: Arc<ServerConfig>,
    pub graph: GraphClient,
    pub keys: Keyring,
    pub jwt: JwtKeys,
    /// Key that signs OAuth `state` values.
    pub state_key: Vec<u8>,
}

impl AppState {
    pub fn new(config: Arc<ServerConfig>, db: Db) -> AppState {
        AppState {
            graph: GraphClient::new(&config.meta),
            keys: Keyring::new(&config.encryption_keys),
            jwt: JwtKeys::new(config.jwt_secret.expose()),
            state_key: state_key(config.jwt_secret.expose()),
            db,
            config,
        }
    }

    /// Where Meta sends the browser back after the OAuth dialog.
    pub fn oauth_redirect_uri(&self) -> String {
        format!("{}/api/channels/facebook/oauth/callback", self.config.public_url)
    }
}
