//! Tables that exist once per tenant schema. They are deliberately
//! unqualified: they resolve only through the search path that
//! [`crate::db::with_tenant`] sets.

diesel::table! {
    audit_log (id) {
        id -> Int8,
        actor_user_id -> Nullable<Int8>,
        action -> Text,
        target_type -> Text,
        target_id -> Nullable<Text>,
        details -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    channels (id) {
        id -> Int8,
        platform -> Text,
        external_id -> Text,
        name -> Text,
        status -> Text,
        settings -> Jsonb,
        access_token_enc -> Nullable<Text>,
        parent_external_id -> Nullable<Text>,
        meta_user_id -> Nullable<Text>,
        status_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    channel_members (channel_id, user_id) {
        channel_id -> Int8,
        user_id -> Int8,
    }
}

diesel::table! {
    pending_selections (id) {
        id -> Text,
        created_by -> Int8,
        meta_user_id -> Text,
        user_token_enc -> Text,
        pages -> Jsonb,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(channel_members -> channels (channel_id));
diesel::allow_tables_to_appear_in_same_query!(channels, channel_members, audit_log, pending_selections);
