//! What a tenant's own systems (a CRM, a data warehouse, a bot) get from
//! Switchboard besides the API and the WebSocket: the live events, POSTed to
//! their endpoints ([`webhooks`]).

pub mod webhooks;
