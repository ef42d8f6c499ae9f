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
