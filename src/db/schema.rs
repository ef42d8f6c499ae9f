//! Tables of the shared `public` schema, always schema-qualified so they
//! resolve on any connection regardless of its search path.

diesel::table! {
    public.tenants (id) {
        id -> Int8,
        slug -> Text,
        name -> Text,
        schema_name -> Text,
        status -> Text,
        schema_version -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        /// Members must sign in in two steps (`auth::mfa`).
        require_mfa -> Bool,
    }
}

diesel::table! {
    public.users (id) {
        id -> Int8,
        email -> Text,
        name -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
        /// Two-step sign-in (`auth::mfa`).
        totp_secret_enc -> Nullable<Text>,
        totp_enabled_at -> Nullable<Timestamptz>,
        totp_last_step -> Nullable<Int8>,
    }
}

diesel::table! {
    /// Single-use recovery codes of two-step sign-in (`auth::mfa`).
    public.recovery_codes (id) {
        id -> Int8,
        user_id -> Int8,
        code_hash -> Text,
        used_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    public.memberships (user_id, tenant_id) {
        user_id -> Int8,
        tenant_id -> Int8,
        role -> Text,
        created_at -> Timestamptz,
        mail_assigned -> Bool,
        mail_mentioned -> Bool,
        mail_overdue -> Bool,
        signature -> Nullable<Text>,
        keep_customer_messages -> Bool,
    }
}

diesel::table! {
    public.refresh_tokens (id) {
        id -> Int8,
        token_hash -> Bytea,
        family_id -> Text,
        user_id -> Int8,
        tenant_id -> Int8,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Members' API tokens (`auth::api_tokens`).
    public.api_tokens (id) {
        id -> Int8,
        tenant_id -> Int8,
        user_id -> Int8,
        name -> Text,
        token_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Invitations to join a tenant (`auth::invitations`).
    public.invitations (id) {
        id -> Int8,
        tenant_id -> Int8,
        email -> Text,
        role -> Text,
        token_hash -> Bytea,
        invited_by -> Nullable<Int8>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        accepted_at -> Nullable<Timestamptz>,
        accepted_by -> Nullable<Int8>,
        mailed -> Bool,
    }
}

diesel::table! {
    /// The tokens of invitations replaced by a newer one of the same email
    /// (`auth::invitations`).
    public.replaced_invitations (token_hash) {
        token_hash -> Bytea,
        tenant_id -> Int8,
        email -> Text,
        replaced_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    /// Erasures' pending passes over processed webhook bodies
    /// (`inbox::scrub`).
    public.webhook_scrubs (id) {
        id -> Int8,
        channel -> Text,
        contact_ids -> Array<Text>,
        after_id -> Int8,
        up_to -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Mail waiting to be sent, and sent (`mail`).
    public.mail_outbox (id) {
        id -> Int8,
        recipient -> Text,
        subject -> Text,
        body -> Text,
        created_at -> Timestamptz,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        failed_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        kind -> Text,
        list_unsubscribe -> Nullable<Text>,
        tenant_id -> Nullable<Int8>,
        user_id -> Nullable<Int8>,
        conversation_ids -> Nullable<Array<Int8>>,
    }
}

diesel::table! {
    /// Password resets asked for by mail (`auth::password_reset`).
    public.password_resets (id) {
        id -> Int8,
        user_id -> Int8,
        token_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(memberships -> users (user_id));
diesel::joinable!(memberships -> tenants (tenant_id));
diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    users,
    memberships,
    refresh_tokens,
    api_tokens,
    recovery_codes,
    invitations
);

diesel::table! {
    public.channel_routes (platform, external_id) {
        platform -> Text,
        external_id -> Text,
        tenant_id -> Int8,
        channel_id -> Int8,
        created_at -> Timestamptz,
        parent_external_id -> Nullable<Text>,
    }
}

diesel::table! {
    public.oauth_states (nonce) {
        nonce -> Text,
        tenant_id -> Int8,
        user_id -> Int8,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    public.meta_user_links (meta_user_id, tenant_id) {
        meta_user_id -> Text,
        tenant_id -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    public.data_deletion_requests (confirmation_code) {
        confirmation_code -> Text,
        meta_user_id -> Text,
        status -> Text,
        tenants_affected -> Int4,
        channels_affected -> Int4,
        created_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        request_key -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(channel_routes, tenants);

diesel::table! {
    public.webhook_events (id) {
        id -> Int8,
        body -> Bytea,
        received_at -> Timestamptz,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        processed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    public.send_queue (id) {
        id -> Int8,
        tenant_id -> Int8,
        message_id -> Nullable<Int8>,
        conversation_id -> Nullable<Int8>,
        kind -> Text,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        broadcast_id -> Nullable<Int8>,
        scheduled_message_id -> Nullable<Int8>,
        may_have_gone -> Bool,
    }
}

diesel::table! {
    public.ws_tickets (ticket_hash) {
        ticket_hash -> Bytea,
        tenant_id -> Int8,
        user_id -> Int8,
        role -> Text,
        family -> Text,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    public.outgoing_webhooks (id) {
        id -> Int8,
        tenant_id -> Int8,
        url -> Text,
        secret_enc -> Text,
        event_types -> Array<Text>,
        enabled -> Bool,
        cursor_seq -> Int8,
        failures -> Int4,
        next_attempt_at -> Timestamptz,
        leased_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        last_delivered_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}
