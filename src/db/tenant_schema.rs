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
        last_webhook_at -> Nullable<Timestamptz>,
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

diesel::table! {
    contacts (id) {
        id -> Int8,
        channel_id -> Int8,
        external_id -> Text,
        name -> Nullable<Text>,
        profile_pic_url -> Nullable<Text>,
        profile_checked_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        name_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    conversations (id) {
        id -> Int8,
        channel_id -> Int8,
        contact_id -> Int8,
        status -> Text,
        assignee_id -> Nullable<Int8>,
        snoozed_until -> Nullable<Timestamptz>,
        unread_count -> Int4,
        last_message_id -> Nullable<Int8>,
        last_activity_at -> Timestamptz,
        last_inbound_at -> Nullable<Timestamptz>,
        last_inbound_external_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    messages (id) {
        id -> Int8,
        conversation_id -> Int8,
        channel_id -> Int8,
        direction -> Text,
        sender_kind -> Text,
        sender_user_id -> Nullable<Int8>,
        text -> Nullable<Text>,
        attachments -> Jsonb,
        status -> Text,
        error -> Nullable<Jsonb>,
        external_id -> Nullable<Text>,
        client_id -> Nullable<Text>,
        reply_to_external_id -> Nullable<Text>,
        quick_reply_payload -> Nullable<Text>,
        postback_payload -> Nullable<Text>,
        reactions -> Jsonb,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        platform_timestamp -> Nullable<Timestamptz>,
        sort_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    early_statuses (channel_id, external_id, status) {
        channel_id -> Int8,
        external_id -> Text,
        status -> Text,
        error -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    events (seq) {
        seq -> Int8,
        #[sql_name = "type"]
        type_ -> Text,
        channel_id -> Nullable<Int8>,
        conversation_id -> Nullable<Int8>,
        payload -> Json,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    contact_former_numbers (channel_id, external_id, changed_at) {
        channel_id -> Int8,
        external_id -> Text,
        contact_id -> Int8,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    event_seq (id) {
        id -> Int4,
        value -> Int8,
    }
}

diesel::table! {
    canned_responses (id) {
        id -> Int8,
        shortcut -> Text,
        text -> Text,
        created_by -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(conversations -> contacts (contact_id));
diesel::joinable!(conversations -> channels (channel_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(contacts -> channels (channel_id));
diesel::joinable!(contact_former_numbers -> contacts (contact_id));
diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    pending_selections,
    canned_responses,
    channels,
    channel_members,
    contacts,
    contact_former_numbers,
    conversations,
    messages,
    events,
    early_statuses
);
